"""The GRPCInferenceService servicer: decode, call the data plane, encode. Nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc

from wattserve.core.dataplane import DataPlane
from wattserve.core.errors import InvalidRequest, WattserveError
from wattserve.core.types import DEFAULT_TENANT
from wattserve.grpc import messages
from wattserve.grpc.status import describe, translate_errors
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

    async def _infer(self, request: Any, time_remaining: float | None, tenant: str) -> Any:
        """Decode, infer, encode; a request that cannot be decoded still counts against its
        model's failures."""
        try:
            decoded = messages.decode_infer_request(request, time_remaining, tenant)
        except WattserveError as exc:
            self._dataplane.reject(request.model_name, request.model_version, tenant, exc)
            raise
        return messages.encode_infer_response(await self._dataplane.infer(decoded))

    @translate_errors
    async def ModelInfer(self, request: Any, context: Context) -> Any:
        try:
            tenant = tenant_of(context.invocation_metadata())
        except WattserveError as exc:
            self._dataplane.reject(request.model_name, request.model_version, DEFAULT_TENANT, exc)
            raise
        return await self._infer(request, context.time_remaining(), tenant)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[Any]:
        """Requests on one stream run concurrently (so they batch); responses leave as they finish,
        each carrying its request's id. A failed request answers `error_message`; the stream
        goes on.
        """
        finished: asyncio.Queue[Any] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()
        try:
            tenant = tenant_of(context.invocation_metadata())
        except WattserveError as exc:
            await context.abort(*describe(exc))

        async def answer(request: Any) -> None:
            try:
                response = await self._infer(request, None, tenant)
                await finished.put(pb.ModelStreamInferResponse(infer_response=response))
            except Exception as exc:
                _, message = describe(exc)
                failed = pb.ModelInferResponse(
                    model_name=request.model_name,
                    model_version=request.model_version,
                    id=request.id,
                )
                await finished.put(
                    pb.ModelStreamInferResponse(error_message=message, infer_response=failed)
                )

        async def read() -> None:
            async for request in request_iterator:
                task = asyncio.create_task(answer(request))
                running.add(task)
                task.add_done_callback(running.discard)
            while running:
                await asyncio.gather(*running)
            await finished.put(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await finished.get()) is not None:
                yield item
            await reader  # surfaces a failure to read the stream
        finally:
            reader.cancel()
            for task in running:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(reader, *running, return_exceptions=True)

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
