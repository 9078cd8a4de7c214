"""The GRPCInferenceService servicer: decode, call the data plane, encode. Nothing else."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc

from wattserve.core.dataplane import DataPlane, Submitted
from wattserve.core.errors import InvalidRequest, WattserveError
from wattserve.core.types import DEFAULT_TENANT, InferRequest
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

        No task per message: each queued request's future hands its response to the outbox.
        """
        try:
            tenant = tenant_of(context.invocation_metadata())
        except WattserveError as exc:
            await context.abort(*describe(exc))
        outbox: collections.deque[Any] = collections.deque()
        posted = asyncio.Event()
        queued: set[Submitted] = set()
        reading = True

        def failed(request: Any, exc: Exception) -> Any:
            _, message = describe(exc)
            response = pb.ModelStreamInferResponse(error_message=message)
            answer = response.infer_response
            answer.model_name = request.model_name
            answer.model_version = request.model_version
            answer.id = request.id
            return response

        def finished(request: Any, submitted: Submitted, _: object) -> None:
            queued.discard(submitted)
            try:
                answer = self._dataplane.collect(submitted)
            except asyncio.CancelledError:
                return  # the stream went away before this request ran (counted as cancelled)
            except Exception as exc:
                outbox.append(failed(request, exc))
            else:
                response = pb.ModelStreamInferResponse()
                messages.encode_infer_response(answer, response.infer_response)
                outbox.append(response)
            posted.set()

        async def read() -> None:
            nonlocal reading
            try:
                async for request in request_iterator:
                    try:
                        submitted = self._dataplane.submit(self._decode(request, None, tenant))
                    except Exception as exc:  # this message fails; the stream goes on
                        outbox.append(failed(request, exc))
                        posted.set()
                        continue
                    queued.add(submitted)
                    submitted.future.add_done_callback(
                        functools.partial(finished, request, submitted)
                    )
            finally:
                reading = False
                posted.set()

        reader = asyncio.create_task(read())
        try:
            while True:
                while outbox:
                    yield outbox.popleft()
                if not reading and not queued:
                    break
                posted.clear()
                await posted.wait()
            await reader  # surfaces a failure to read the stream
        finally:
            reader.cancel()
            for submitted in list(queued):  # the stream is gone: drop what has not run
                submitted.future.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(reader, return_exceptions=True)

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
