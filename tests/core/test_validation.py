"""Validation against a signature, before anything is queued."""

from __future__ import annotations

import numpy as np
import pytest

from wattserve.core.datatypes import BY_NAME
from wattserve.core.errors import InvalidRequest
from wattserve.core.types import InferRequest, Signature, TensorSpec
from wattserve.core.validation import validate

TEXT = Signature(
    inputs=(
        TensorSpec("ids", BY_NAME["INT64"], (-1, -1)),
        TensorSpec("mask", BY_NAME["BOOL"], (-1, -1)),
    ),
    outputs=(TensorSpec("p", BY_NAME["FP32"], (-1, 4)),),
    max_batch_size=8,
)
FIXED = Signature(
    inputs=(TensorSpec("x", BY_NAME["FP32"], (2, 3)),),
    outputs=(TensorSpec("y", BY_NAME["FP32"], (2, 3)),),
    max_batch_size=0,
)
WORDS = Signature(
    inputs=(TensorSpec("w", BY_NAME["BYTES"], (-1, 2)),),
    outputs=(TensorSpec("n", BY_NAME["INT64"], (-1,)),),
    max_batch_size=4,
)


def text_request(rows: int = 2, length: int = 5, **overrides: np.ndarray) -> InferRequest:
    inputs = {
        "ids": np.zeros((rows, length), np.int64),
        "mask": np.ones((rows, length), bool),
        **overrides,
    }
    return InferRequest("text", inputs)


def test_valid_request_gives_rows_and_a_key_of_its_non_batch_dims() -> None:
    inputs, rows, key = validate(text_request(rows=3, length=7), TEXT, "model 'text'")
    assert rows == 3
    assert key == ((7,), (7,))
    assert inputs["ids"].shape == (3, 7)
    assert validate(text_request(length=9), TEXT, "m")[2] != key


def test_fixed_shape_model_takes_exactly_its_shape() -> None:
    _, rows, key = validate(InferRequest("f", {"x": np.zeros((2, 3), np.float32)}), FIXED, "m")
    assert (rows, key) == (1, None)
    with pytest.raises(InvalidRequest, match=r"expects shape \[2, 3\] .*got \[1, 3\]"):
        validate(InferRequest("f", {"x": np.zeros((1, 3), np.float32)}), FIXED, "m")


def test_bytes_become_utf8_text_for_onnx_runtime() -> None:
    words = np.array([[b"caf\xc3\xa9", b""]], dtype=object)
    inputs, _, _ = validate(InferRequest("w", {"w": words}), WORDS, "m")
    assert inputs["w"].tolist() == [["caf\u00e9", ""]]
    with pytest.raises(InvalidRequest, match="BYTES element 1 is not valid UTF-8"):
        validate(InferRequest("w", {"w": np.array([[b"ok", b"\xff"]], dtype=object)}), WORDS, "m")


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            text_request(extra=np.zeros(1)),
            r"m: unknown input 'extra'; the model's inputs are \['ids', 'mask'\]",
        ),
        (InferRequest("t", {"ids": np.zeros((1, 2), np.int64)}), r"m: missing input 'mask'"),
        (
            text_request(ids=np.zeros((2, 5), np.int32)),
            r"input 'ids' expects datatype INT64, got INT32",
        ),
        (
            text_request(mask=np.ones((2, 5, 1), bool)),
            r"input 'mask' expects shape \[-1, -1\] \(-1 = any size\), got \[2, 5, 1\]",
        ),
        (
            text_request(mask=np.ones((3, 5), bool)),
            r"input 'mask' has 3 rows but the other inputs have 2",
        ),
        (text_request(rows=9), r"request has 9 rows, more than max_batch_size 8"),
        (text_request(rows=0), r"request has 0 rows"),
        (
            InferRequest("t", text_request().inputs, outputs=("q",)),
            r"unknown output 'q' requested; the model's outputs are \['p'\]",
        ),
    ],
)
def test_invalid_requests_name_what_was_expected_and_what_came(
    request_: InferRequest, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        validate(request_, TEXT, "m")
