"""The reference point of issue 5: a minimal grpc.aio server with a simple batching loop.

One model, raw tensors only, no validation beyond what numpy does, no metering, no tenants, no
error mapping; ModelStatistics answers only the rows and batches run (for bench/ab.py).
Requests go on a list; a batching task wakes on the first one, waits out a fixed window
(`--delay-us`, 1 ms by default, as the issue describes), then merges everything queued, runs
it, splits the outputs and answers. It is the simplest server that batches, so wattserve's cost
above it is the price of everything wattserve adds.

    python bench/_minimal.py --model REPO/tabular_classifier/1/model.onnx \\
        [--delay-us 1000] [--run-on thread|loop] [--port 0]
    # prints "wattserve ready: serving 1 model(s) on HOST:PORT"

The ready line mimics wattserve's, so `_server.serving` starts and stops it like the others.
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
from _echo import serve_until_terminated

from wattserve.core.datatypes import BY_ONNX
from wattserve.protocol import pb, pb_grpc


class Batching(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, session: ort.InferenceSession, delay_s: float, on_thread: bool) -> None:
        self._session = session
        self._input = session.get_inputs()[0]
        self._dtype = BY_ONNX[self._input.type].numpy
        self._width = list(self._input.shape[1:])
        self._outputs = [(o.name, BY_ONNX[o.type].name) for o in session.get_outputs()]
        self._delay_s = delay_s
        self._executor = ThreadPoolExecutor(1) if on_thread else None
        self._queue: list[tuple[np.ndarray, asyncio.Future[list[np.ndarray]]]] = []
        self._arrived = asyncio.Event()
        self.rows_run = self.batches_run = 0
        self._task = asyncio.get_running_loop().create_task(self._batches())

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        rows = np.frombuffer(request.raw_input_contents[0], dtype=self._dtype)
        future = asyncio.get_running_loop().create_future()
        self._queue.append((rows.reshape([-1, *self._width]), future))
        self._arrived.set()
        outputs = await future
        response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        for (name, datatype), array in zip(self._outputs, outputs, strict=True):
            response.outputs.add(name=name, datatype=datatype, shape=array.shape)
            response.raw_output_contents.append(array.tobytes())
        return response

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        stats = pb.ModelStatistics(
            name=request.name, inference_count=self.rows_run, execution_count=self.batches_run
        )
        return pb.ModelStatisticsResponse(model_stats=[stats])

    async def _batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            await asyncio.sleep(self._delay_s)
            batch, self._queue = self._queue, []
            self._arrived.clear()
            try:
                merged = np.concatenate([rows for rows, _ in batch])
                feeds = {self._input.name: merged}
                if self._executor is None:
                    outputs = self._session.run(None, feeds)
                else:
                    run = self._session.run
                    outputs = await loop.run_in_executor(self._executor, run, None, feeds)
            except Exception as exc:  # a bad request fails its batch, not the server
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.rows_run += len(merged)
            self.batches_run += 1
            start = 0
            for rows, future in batch:
                end = start + len(rows)
                if not future.done():  # its caller may have been cancelled meanwhile
                    future.set_result([output[start:end] for output in outputs])
                start = end


def load_session(model: str | Path) -> ort.InferenceSession:
    """As wattserve's demo models: one thread, no spinning."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an ONNX file whose first axis is batch")
    parser.add_argument("--delay-us", type=int, default=1000)
    parser.add_argument("--run-on", choices=("thread", "loop"), default="thread")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    session = load_session(args.model)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    servicer = Batching(session, args.delay_us / 1e6, args.run_on == "thread")
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    await serve_until_terminated(server, port, models=1)


if __name__ == "__main__":
    asyncio.run(main())
