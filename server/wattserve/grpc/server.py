"""Builds the grpc.aio server: the inference service, standard health checking and reflection."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from wattserve.core.dataplane import DataPlane
from wattserve.grpc.servicer import InferenceServicer
from wattserve.protocol import SERVICE_NAME, config_pb, pb, pb_grpc

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def _reflection_pool() -> descriptor_pool.DescriptorPool:
    """Our files live in a private pool (see proto/generate.py); reflection needs one pool."""
    pool = descriptor_pool.DescriptorPool()
    for module in (config_pb, pb, health_pb2, reflection_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)  # type: ignore[no-untyped-call]
    return pool


class GenericHandlersOnly:
    """Lets generated `add_*Servicer_to_server` code add its handlers as generic handlers only.

    For every *registered* method, grpc.aio's server keeps a pending "request call" future and
    awaits `asyncio.wait` over all of them each time it accepts a call: 23 futures with the
    inference service's 20 methods, health's 2 and reflection's 1, which cost about 30 µs more
    per accepted call than one future (docs/performance.md). Generic handlers serve the same
    methods through one lookup per service.
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        """Not registered: the generic handler added alongside serves these methods."""


def build_server(
    dataplane: DataPlane,
    health: health_aio.HealthServicer,
    *,
    max_message_bytes: int,
    reuse_port: bool = False,
) -> grpc.aio.Server:
    """`reuse_port`: share the port with the other worker processes (SO_REUSEPORT)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # gRPC enables SO_REUSEPORT by default, which would let a second server silently
            # share the port; only worker processes opt in.
            ("grpc.so_reuseport", int(reuse_port)),
        ]
    )
    generic_only = GenericHandlersOnly(server)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(dataplane), generic_only)  # type: ignore[no-untyped-call]
    health_pb2_grpc.add_HealthServicer_to_server(health, generic_only)
    # What `reflection.enable_server_reflection` does, but through `generic_only` too: it would
    # register reflection's method, and so add a request-call future to every accepted call.
    names = [SERVICE_NAME, HEALTH_SERVICE, reflection.SERVICE_NAME]
    reflector = reflection.aio.ReflectionServicer(names, pool=_reflection_pool())
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflector, generic_only)
    return server
