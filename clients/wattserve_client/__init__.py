"""Python client for wattserve (and any Open Inference Protocol gRPC server): numpy in, numpy out.

async with AsyncClient("127.0.0.1:8001") as client:
    outputs = await client.infer("dense", {"input": np.zeros((4, 512), np.float32)})
"""

from wattserve_client._errors import InferenceError
from wattserve_client.aio import AsyncClient
from wattserve_client.sync import Client

__all__ = ["AsyncClient", "Client", "InferenceError"]
