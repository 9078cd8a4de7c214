"""One ModelStreamInfer stream: messages queued as they arrive, answers sent as they finish.

No task per message. The reader submits each decoded message to its model's batcher
(`DataPlane.submit`); the queued request's future, once done, encodes the answer straight into a
`ModelStreamInferResponse` and appends it to the outbox that `responses` drains. A message that
fails answers `error_message` (with its model, version and id) and the stream goes on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from wattserve.core.dataplane import DataPlane, Submitted
from wattserve.core.types import InferRequest
from wattserve.grpc import messages
from wattserve.grpc.status import describe
from wattserve.protocol import pb


class StreamAnswers:
    def __init__(self, dataplane: DataPlane, decode: Callable[[Any], InferRequest]) -> None:
        self._dataplane = dataplane
        self._decode = decode
        self._outbox: collections.deque[Any] = collections.deque()
        self._posted = asyncio.Event()
        self._queued: set[Submitted] = set()
        self._reading = True

    async def responses(self, requests: AsyncIterator[Any]) -> AsyncGenerator[Any, None]:
        """Every request's answer, in the order they finish."""
        reader = asyncio.create_task(self._read(requests))
        try:
            while True:
                while self._outbox:
                    yield self._outbox.popleft()
                if not self._reading and not self._queued:
                    break
                self._posted.clear()
                await self._posted.wait()
            await reader  # surfaces a failure to read the stream
        finally:
            reader.cancel()
            # The stream is gone: queued requests never run; a running batch's answers are lost.
            for submitted in list(self._queued):
                submitted.future.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(reader, return_exceptions=True)

    async def _read(self, requests: AsyncIterator[Any]) -> None:
        try:
            async for request in requests:
                try:
                    submitted = self._dataplane.submit(self._decode(request))
                except Exception as exc:  # this message fails; the stream goes on
                    self._post(_failed(request, exc))
                    continue
                self._queued.add(submitted)
                submitted.future.add_done_callback(
                    functools.partial(self._finished, request, submitted)
                )
        finally:
            self._reading = False
            self._posted.set()

    def _finished(self, request: Any, submitted: Submitted, _: object) -> None:
        self._queued.discard(submitted)
        try:
            answer = self._dataplane.collect(submitted)
        except asyncio.CancelledError:
            return  # the stream went away before this request ran (counted as cancelled)
        except Exception as exc:
            self._post(_failed(request, exc))
            return
        response = pb.ModelStreamInferResponse()
        messages.encode_infer_response(answer, response.infer_response)
        self._post(response)

    def _post(self, response: Any) -> None:
        self._outbox.append(response)
        self._posted.set()


def _failed(request: Any, exc: Exception) -> Any:
    _, message = describe(exc)
    response = pb.ModelStreamInferResponse(error_message=message)
    answer = response.infer_response
    answer.model_name = request.model_name
    answer.model_version = request.model_version
    answer.id = request.id
    return response
