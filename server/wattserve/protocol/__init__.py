"""Generated Open Inference Protocol messages and stubs (run `make proto` to regenerate).

Only this package and `wattserve.grpc` import protobuf; the core never does.
"""

from wattserve.protocol import grpc_service_pb2 as pb
from wattserve.protocol import grpc_service_pb2_grpc as pb_grpc
from wattserve.protocol import model_config_pb2 as config_pb
from wattserve.protocol._pool import POOL

SERVICE_NAME = "inference.GRPCInferenceService"

__all__ = ["POOL", "SERVICE_NAME", "config_pb", "pb", "pb_grpc"]
