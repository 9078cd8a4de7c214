"""The asyncio client (the primary one): one channel, numpy tensors in and out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc
import numpy as np

from wattserve.protocol import pb, pb_grpc
from wattserve_client._errors import InferenceError, from_rpc_error
from wattserve_client._request import CHANNEL_OPTIONS, Tensors, infer_request, outputs_of

_STREAM_ENDED = object()
"""What a stream's reader in `AsyncClient.stream_infer` posts when its stream has ended."""


async def _numbered_requests(
    model: str,
    batches: AsyncIterable[Mapping[str, np.ndarray]] | Iterable[Mapping[str, np.ndarray]],
) -> AsyncIterator[Any]:
    """One ModelInferRequest per input mapping, with its position as its id."""
    index = 0
    if isinstance(batches, AsyncIterable):
        async for inputs in batches:
            yield infer_request(model, inputs, request_id=str(index))
            index += 1
    else:
        for inputs in batches:
            yield infer_request(model, inputs, request_id=str(index))
            index += 1


class AsyncClient:
    """Talks to one server. Every failed call raises InferenceError with the gRPC status."""

    def __init__(
        self, target: str, *, interceptors: Sequence[grpc.aio.ClientInterceptor] = ()
    ) -> None:
        """`interceptors`: grpc.aio client interceptors for every call (metadata, auth, tracing)."""
        self._channel = grpc.aio.insecure_channel(
            target, options=CHANNEL_OPTIONS, interceptors=interceptors
        )
        self.stub = pb_grpc.GRPCInferenceServiceStub(self._channel)  # type: ignore[no-untyped-call]
        """The raw generated stub, for RPCs this client does not wrap."""

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: str, request: Any, timeout_s: float | None = None) -> Any:
        try:
            return await getattr(self.stub, method)(request, timeout=timeout_s)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    async def server_live(self) -> bool:
        return bool((await self._call("ServerLive", pb.ServerLiveRequest())).live)

    async def server_ready(self) -> bool:
        return bool((await self._call("ServerReady", pb.ServerReadyRequest())).ready)

    async def model_ready(self, model: str, version: str = "") -> bool:
        request = pb.ModelReadyRequest(name=model, version=version)
        return bool((await self._call("ModelReady", request)).ready)

    async def model_metadata(self, model: str, version: str = "") -> Any:
        return await self._call(
            "ModelMetadata", pb.ModelMetadataRequest(name=model, version=version)
        )

    async def model_config(self, model: str, version: str = "") -> Any:
        request = pb.ModelConfigRequest(name=model, version=version)
        return (await self._call("ModelConfig", request)).config

    async def model_statistics(self, model: str = "", version: str = "") -> Any:
        request = pb.ModelStatisticsRequest(name=model, version=version)
        return (await self._call("ModelStatistics", request)).model_stats

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        outputs: Iterable[str] = (),
        version: str = "",
        request_id: str = "",
        timeout_s: float | None = None,
        parameters: Mapping[str, bool | int | float | str] | None = None,
    ) -> Tensors:
        """Run one request; returns the outputs (all, or those named) as numpy arrays."""
        request = infer_request(
            model,
            inputs,
            outputs=outputs,
            version=version,
            request_id=request_id,
            parameters=parameters,
        )
        return outputs_of(await self._call("ModelInfer", request, timeout_s))

    async def stream_infer(
        self,
        model: str,
        batches: AsyncIterable[Mapping[str, np.ndarray]] | Iterable[Mapping[str, np.ndarray]],
        *,
        streams: int = 1,
    ) -> AsyncIterator[tuple[str, Tensors | InferenceError]]:
        """Send many requests on ModelStreamInfer streams; yields (request id, outputs or error)
        as responses arrive, which may be out of order. Ids are the inputs' positions ("0", "1"...).

        `streams` opens that many streams on the channel, each sending the next request as soon as
        it can. A server reads each stream's messages one at a time, so for throughput spread
        many requests in flight over several streams (docs/performance.md, "Several streams").
        """
        if streams < 1:
            raise ValueError(f"streams must be >= 1, got {streams}")
        source = _numbered_requests(model, batches)
        taking = asyncio.Lock()  # an async generator refuses a second caller while it waits

        async def requests() -> AsyncIterator[Any]:
            while True:
                async with taking:
                    request = await anext(source, None)
                if request is None:
                    return
                yield request

        calls = [self.stub.ModelStreamInfer(requests()) for _ in range(streams)]
        arrived: asyncio.Queue[Any] = asyncio.Queue()

        async def drain(call: Any) -> None:
            try:
                async for response in call:
                    arrived.put_nowait(response)
            except grpc.RpcError as error:
                arrived.put_nowait(error)
            finally:
                arrived.put_nowait(_STREAM_ENDED)

        drains = [asyncio.create_task(drain(call)) for call in calls]
        try:
            open_streams = streams
            while open_streams:
                item = await arrived.get()
                if item is _STREAM_ENDED:
                    open_streams -= 1
                elif isinstance(item, grpc.RpcError):
                    raise from_rpc_error(item) from None
                elif item.error_message:
                    error = InferenceError(grpc.StatusCode.UNKNOWN, item.error_message)
                    yield item.infer_response.id, error
                else:
                    yield item.infer_response.id, outputs_of(item.infer_response)
        finally:
            for call in calls:
                call.cancel()
            for task in drains:
                task.cancel()
            await asyncio.gather(*drains, return_exceptions=True)
