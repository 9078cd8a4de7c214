"""The protocol-free API of the server: what every RPC means, independent of gRPC and protobuf."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

from wattserve import __version__
from wattserve.core.errors import NotAllowed, WattserveError
from wattserve.core.observer import UsageObserver
from wattserve.core.registry import IndexEntry, ModelRegistry, ServedModel
from wattserve.core.types import InferRequest, InferResponse, Parameter
from wattserve.core.validation import validate

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
# Only what we really implement: perf_analyzer asks ModelStatistics when "statistics" is listed.
EXTENSIONS = ("model_repository", "model_configuration", "statistics")
# A request parameter (bool) asking for the request's energy, carbon and cost in the response.
FIGURES_PARAMETER = "wattserve_energy"


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
        model = self._registry.get(request.model_name, request.model_version)
        version = str(model.version)
        started = time.perf_counter_ns()
        rows = 0
        try:
            inputs, rows, shape_key = validate(request, model.signature, model.label)
            outputs, queue_ns = await model.scheduler.infer(
                inputs, rows, shape_key, request.deadline, request.tenant
            )
        except (WattserveError, asyncio.CancelledError) as exc:
            total_ns = time.perf_counter_ns() - started
            model.statistics.record_request(ok=False, total_ns=total_ns, queue_ns=None)
            if self._observer is not None:
                code = exc.status if isinstance(exc, WattserveError) else "CANCELLED"
                self._observer.request(
                    model.name, version, request.tenant, code, rows, total_ns, None
                )
            raise
        types = model.output_types
        parameters: Mapping[str, Parameter] = {}
        if self._observer is not None and (
            self._response_figures or request.parameters.get(FIGURES_PARAMETER) is True
        ):
            parameters = self._observer.response_parameters(model.name, version, rows)
        response = InferResponse(
            model_name=model.name,
            model_version=version,
            outputs={n: (types[n], outputs[n]) for n in request.outputs or model.all_outputs},
            id=request.id,
            parameters=parameters,
        )
        total_ns = time.perf_counter_ns() - started
        model.statistics.record_request(ok=True, total_ns=total_ns, queue_ns=queue_ns)
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
        model.statistics.record_request(ok=False, total_ns=0, queue_ns=None)
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
