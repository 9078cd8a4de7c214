"""The protocol-free API of the server: what every RPC means, independent of gRPC and protobuf."""

from __future__ import annotations

import time
from dataclasses import dataclass

from wattserve import __version__
from wattserve.core.errors import NotAllowed, WattserveError
from wattserve.core.registry import IndexEntry, ModelRegistry, ServedModel
from wattserve.core.types import InferRequest, InferResponse
from wattserve.core.validation import validate

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
# Only what we really implement: perf_analyzer asks ModelStatistics when "statistics" is listed.
EXTENSIONS = ("model_repository", "model_configuration", "statistics")


@dataclass(frozen=True, slots=True)
class ServerInfo:
    name: str = "wattserve"
    version: str = __version__
    extensions: tuple[str, ...] = EXTENSIONS


class DataPlane:
    """Answers liveness, readiness, metadata, inference, statistics and repository requests."""

    def __init__(self, registry: ModelRegistry, *, explicit_model_control: bool) -> None:
        self._registry = registry
        self._explicit = explicit_model_control
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
        started = time.perf_counter_ns()
        try:
            inputs, rows, shape_key = validate(request, model.signature, model.label)
            outputs, queue_ns = await model.scheduler.submit(
                inputs, rows, shape_key, request.deadline
            )
        except WattserveError:
            model.statistics.record_request(
                ok=False, total_ns=time.perf_counter_ns() - started, queue_ns=None
            )
            raise
        types = model.output_types
        response = InferResponse(
            model_name=model.name,
            model_version=str(model.version),
            outputs={n: (types[n], outputs[n]) for n in request.outputs or model.all_outputs},
            id=request.id,
        )
        model.statistics.record_request(
            ok=True, total_ns=time.perf_counter_ns() - started, queue_ns=queue_ns
        )
        return response

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
