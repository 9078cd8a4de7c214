"""The protocol-free API of the server: what every RPC means, independent of gRPC and protobuf."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

from wattserve import __version__
from wattserve.core.errors import NotAllowed, WattserveError
from wattserve.core.observer import UsageObserver
from wattserve.core.registry import IndexEntry, ModelRegistry, ServedModel
from wattserve.core.types import InferRequest, InferResponse, Parameter, Tensors
from wattserve.core.validation import validate

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
# Only what we really implement: perf_analyzer asks ModelStatistics when "statistics" is listed.
EXTENSIONS = ("model_repository", "model_configuration", "statistics")
# A request parameter (bool) asking for the request's energy, carbon and cost in the response.
FIGURES_PARAMETER = "wattserve_energy"


@dataclass(slots=True, eq=False)
class _Admitted:
    """A request found valid for its model, on its way through the batcher."""

    request: InferRequest
    model: ServedModel
    started_ns: int
    inputs: Tensors
    rows: int
    shape_key: Hashable


@dataclass(frozen=True, slots=True, eq=False)
class Submitted:
    """A request in its model's queue (`DataPlane.submit`); `future` resolves when it has run."""

    admitted: _Admitted
    future: asyncio.Future[tuple[Tensors, int]]


@dataclass(frozen=True, slots=True)
class ServerInfo:
    name: str = "wattserve"
    version: str = __version__
    extensions: tuple[str, ...] = EXTENSIONS


class DataPlane:
    """Answers liveness, readiness, metadata, inference, statistics and repository requests."""

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        explicit_model_control: bool,
        observer: UsageObserver | None = None,
        response_figures: bool = False,
    ) -> None:
        self._registry = registry
        self._explicit = explicit_model_control
        self._observer = observer
        self._response_figures = response_figures
        """Add the meter's figures to every response, not only to those that ask."""
        self.info = ServerInfo()
        self.ready = False
        """True between the end of start-up loading and the start of shutdown."""

    def model(self, name: str, version: str = "") -> ServedModel:
        return self._registry.get(name, version)

    def model_versions(self, name: str) -> list[ServedModel]:
        return self._registry.versions(name)

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self._registry.get(name, version)
        except WattserveError:
            return False
        return True

    async def infer(self, request: InferRequest) -> InferResponse:
        """Run one request; at once when its model is idle (the batcher's front door)."""
        admitted = self._admit(request)
        try:
            outputs, queue_ns = await admitted.model.scheduler.infer(
                admitted.inputs, admitted.rows, admitted.shape_key, request.deadline, request.tenant
            )
        except (WattserveError, asyncio.CancelledError) as exc:
            self._failed(admitted, exc)
            raise
        return self._answer(admitted, outputs, queue_ns)

    def submit(self, request: InferRequest) -> Submitted:
        """Queue one request for its model's batcher without waiting for it: a stream's messages
        are submitted as they arrive and batch together. Pass the result to `collect` once its
        future is done. Raises at once (counted as failed) when the request is invalid or the
        queue refuses it."""
        admitted = self._admit(request)
        try:
            future = admitted.model.scheduler.submit(
                admitted.inputs, admitted.rows, admitted.shape_key, request.deadline, request.tenant
            )
        except WattserveError as exc:
            self._failed(admitted, exc)
            raise
        return Submitted(admitted, future)

    def collect(self, submitted: Submitted) -> InferResponse:
        """The response of a submitted request whose future is done; raises its failure."""
        admitted, future = submitted.admitted, submitted.future
        try:
            outputs, queue_ns = future.result()
        except (WattserveError, asyncio.CancelledError) as exc:
            self._failed(admitted, exc)
            raise
        return self._answer(admitted, outputs, queue_ns)

    def _admit(self, request: InferRequest) -> _Admitted:
        """Find the model and validate the request; a refusal is counted as a failure."""
        model = self._registry.get(request.model_name, request.model_version)
        started_ns = time.perf_counter_ns()
        try:
            inputs, rows, shape_key = validate(request, model.signature, model.label)
        except WattserveError as exc:
            self._failed(_Admitted(request, model, started_ns, {}, 0, None), exc)
            raise
        return _Admitted(request, model, started_ns, inputs, rows, shape_key)

    def _failed(self, admitted: _Admitted, exc: BaseException) -> None:
        model = admitted.model
        total_ns = time.perf_counter_ns() - admitted.started_ns
        model.statistics.record_failure(total_ns)
        if self._observer is not None:
            code = exc.status if isinstance(exc, WattserveError) else "CANCELLED"
            self._observer.request(
                model.name,
                str(model.version),
                admitted.request.tenant,
                code,
                admitted.rows,
                total_ns,
                None,
            )

    def _answer(self, admitted: _Admitted, outputs: Tensors, queue_ns: int) -> InferResponse:
        request, model, rows = admitted.request, admitted.model, admitted.rows
        version = str(model.version)
        types = model.output_types
        parameters: Mapping[str, Parameter] = {}
        if self._observer is not None and (
            self._response_figures or request.parameters.get(FIGURES_PARAMETER) is True
        ):
            parameters = self._observer.response_parameters(model.name, version, rows)
        response = InferResponse(  # positional, as InferRequest in grpc.messages
            model.name,
            version,
            {n: (types[n], outputs[n]) for n in request.outputs or model.all_outputs},
            request.id,
            parameters,
        )
        total_ns = time.perf_counter_ns() - admitted.started_ns
        model.statistics.record_success(total_ns, queue_ns)
        if self._observer is not None:
            self._observer.request(
                model.name, version, request.tenant, "OK", rows, total_ns, queue_ns
            )
        return response

    def reject(self, name: str, version: str, tenant: str, error: WattserveError) -> None:
        """Count a request refused before it reached `infer` (it could not be decoded) against
        its model, so failure counts by status code include it. Unknown models count nowhere."""
        try:
            model = self._registry.get(name, version)
        except WattserveError:
            return
        model.statistics.record_failure(0)
        if self._observer is not None:
            self._observer.request(model.name, str(model.version), tenant, error.status, 0, 0, None)

    def statistics(self, name: str = "", version: str = "") -> list[ServedModel]:
        """The models whose statistics were asked for: one version, all of one model, or all."""
        if not name:
            return self._registry.loaded()
        if version:
            return [self._registry.get(name, version)]
        return self._registry.versions(name)

    def repository_index(self, ready_only: bool) -> list[IndexEntry]:
        entries = self._registry.index()
        return [e for e in entries if e.state == "READY"] if ready_only else entries

    def _check_model_control(self, action: str, name: str) -> None:
        if not self._explicit:
            raise NotAllowed(
                f"cannot {action} model '{name}': the server was started without explicit model "
                f"control (start it with --model-control-mode explicit)"
            )

    async def load(self, name: str) -> None:
        self._check_model_control("load", name)
        await self._registry.load(name)

    async def unload(self, name: str) -> None:
        self._check_model_control("unload", name)
        await self._registry.unload(name)
