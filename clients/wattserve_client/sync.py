"""The blocking client, for scripts and code without an event loop; same calls as AsyncClient."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import grpc
import numpy as np

from wattserve.protocol import pb, pb_grpc
from wattserve_client._errors import from_rpc_error
from wattserve_client._request import CHANNEL_OPTIONS, Tensors, infer_request, outputs_of


class Client:
    """Talks to one server. Every failed call raises InferenceError with the gRPC status."""

    def __init__(self, target: str) -> None:
        self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request: Any, timeout_s: float | None = None) -> Any:
        try:
            return getattr(self.stub, method)(request, timeout=timeout_s)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def server_live(self) -> bool:
        return bool(self._call("ServerLive", pb.ServerLiveRequest()).live)

    def server_ready(self) -> bool:
        return bool(self._call("ServerReady", pb.ServerReadyRequest()).ready)

    def model_ready(self, model: str, version: str = "") -> bool:
        return bool(
            self._call("ModelReady", pb.ModelReadyRequest(name=model, version=version)).ready
        )

    def model_metadata(self, model: str, version: str = "") -> Any:
        return self._call("ModelMetadata", pb.ModelMetadataRequest(name=model, version=version))

    def model_config(self, model: str, version: str = "") -> Any:
        return self._call("ModelConfig", pb.ModelConfigRequest(name=model, version=version)).config

    def model_statistics(self, model: str = "", version: str = "") -> Any:
        request = pb.ModelStatisticsRequest(name=model, version=version)
        return self._call("ModelStatistics", request).model_stats

    def infer(
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
        return outputs_of(self._call("ModelInfer", request, timeout_s))
