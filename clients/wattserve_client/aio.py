"""The asyncio client (the primary one): one channel, numpy tensors in and out."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import Any

import grpc
import numpy as np

from wattserve.protocol import pb, pb_grpc
from wattserve_client._errors import InferenceError, from_rpc_error
from wattserve_client._request import CHANNEL_OPTIONS, Tensors, infer_request, outputs_of


class AsyncClient:
    """Talks to one server. Every failed call raises InferenceError with the gRPC status."""

    def __init__(self, target: str) -> None:
        self._channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
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
    ) -> AsyncIterator[tuple[str, Tensors | InferenceError]]:
        """Send many requests on one ModelStreamInfer stream; yields (request id, outputs or error)
        as responses arrive, which may be out of order. Ids are the inputs' positions ("0", "1"...).
        """

        async def requests() -> AsyncIterator[Any]:
            index = 0
            if isinstance(batches, AsyncIterable):
                async for inputs in batches:
                    yield infer_request(model, inputs, request_id=str(index))
                    index += 1
            else:
                for inputs in batches:
                    yield infer_request(model, inputs, request_id=str(index))
                    index += 1

        try:
            async for response in self.stub.ModelStreamInfer(requests()):
                answer = response.infer_response
                if response.error_message:
                    yield answer.id, InferenceError(grpc.StatusCode.UNKNOWN, response.error_message)
                else:
                    yield answer.id, outputs_of(answer)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
