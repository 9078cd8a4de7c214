"""The standard grpc.health.v1 service and server reflection, as probes and grpcurl use them."""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def test_health_service_reports_serving(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        try:
            health.Check(health_pb2.HealthCheckRequest(service="no.Such"))
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
        else:
            raise AssertionError("unknown service reported healthy")


def test_reflection_lists_and_describes_the_inference_service(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("inference.GRPCInferenceService")
        request = pool.FindMessageTypeByName("inference.ModelInferRequest")
        config = pool.FindMessageTypeByName("inference.ModelConfig")
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services
    assert "ModelStreamInfer" in service.methods_by_name
    assert request.fields_by_name["raw_input_contents"].number == 7
    assert config.fields_by_name["dynamic_batching"].number == 11
