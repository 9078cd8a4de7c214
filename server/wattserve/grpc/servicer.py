"""The GRPCInferenceService servicer: decode, call the data plane, encode. Nothing else."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc

from wattserve.core.dataplane import DataPlane
from wattserve.core.errors import InvalidRequest, WattserveError
from wattserve.core.types import DEFAULT_TENANT, InferRequest
from wattserve.grpc import messages
from wattserve.grpc.status import describe, translate_errors
from wattserve.grpc.stream import StreamAnswers
from wattserve.grpc.tenants import tenant_of
from wattserve.protocol import pb, pb_grpc

logger = logging.getLogger(__name__)

# grpcio ships no type information; the alias keeps signatures readable.
Context: TypeAlias = grpc.aio.ServicerContext


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """RPCs we do not override (shared memory, trace, logging) answer UNIMPLEMENTED."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane

    async def ServerLive(self, request: Any, context: Context) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Context) -> Any:
        return pb.ServerReadyResponse(ready=self._dataplane.ready)

    async def ModelReady(self, request: Any, context: Context) -> Any:
        return pb.ModelReadyResponse(
            ready=self._dataplane.model_ready(request.name, request.version)
        )

    async def ServerMetadata(self, request: Any, context: Context) -> Any:
        info = self._dataplane.info
        return pb.ServerMetadataResponse(
            name=info.name, version=info.version, extensions=info.extensions
        )

    @translate_errors
    async def ModelMetadata(self, request: Any, context: Context) -> Any:
        model = self._dataplane.model(request.name, request.version)
        return messages.encode_model_metadata(model, self._dataplane.model_versions(request.name))

    def _decode(self, request: Any, time_remaining: float | None, tenant: str) -> InferRequest:
        """A request that cannot be decoded still counts against its model's failures."""
        try:
            return messages.decode_infer_request(request, time_remaining, tenant)
        except WattserveError as exc:
            self._dataplane.reject(request.model_name, request.model_version, tenant, exc)
            raise

    @translate_errors
    async def ModelInfer(self, request: Any, context: Context) -> Any:
        try:
            tenant = tenant_of(context.invocation_metadata())
        except WattserveError as exc:
            self._dataplane.reject(request.model_name, request.model_version, DEFAULT_TENANT, exc)
            raise
        decoded = self._decode(request, context.time_remaining(), tenant)
        return messages.encode_infer_response(await self._dataplane.infer(decoded))

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[Any]:
        """Requests on one stream are queued as they arrive (so they batch); responses leave as
        they finish, each carrying its request's id. A failed request answers `error_message`;
        the stream goes on.

        How: wattserve.grpc.stream.
        """
        try:
            tenant = tenant_of(context.invocation_metadata())
        except WattserveError as exc:
            await context.abort(*describe(exc))
        answers = StreamAnswers(self._dataplane, lambda r: self._decode(r, None, tenant))
        # aclosing: when gRPC stops this generator, the inner one drops what has not run.
        async with contextlib.aclosing(answers.responses(request_iterator)) as responses:
            async for response in responses:
                yield response

    @translate_errors
    async def ModelConfig(self, request: Any, context: Context) -> Any:
        return messages.encode_model_config(self._dataplane.model(request.name, request.version))

    @translate_errors
    async def ModelStatistics(self, request: Any, context: Context) -> Any:
        models = self._dataplane.statistics(request.name, request.version)
        return pb.ModelStatisticsResponse(
            model_stats=[messages.encode_statistics(m) for m in models]
        )

    @translate_errors
    async def RepositoryIndex(self, request: Any, context: Context) -> Any:
        return messages.encode_index(self._dataplane.repository_index(request.ready))

    @translate_errors
    async def RepositoryModelLoad(self, request: Any, context: Context) -> Any:
        if request.parameters:
            raise InvalidRequest(
                f"cannot load model '{request.model_name}' with parameters "
                f"{sorted(request.parameters)}: wattserve loads models only from the files in "
                f"its repository, without overrides"
            )
        await self._dataplane.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @translate_errors
    async def RepositoryModelUnload(self, request: Any, context: Context) -> Any:
        await self._dataplane.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()
