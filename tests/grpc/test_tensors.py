"""The tensor wire format: raw round trips for every datatype, zero-copy decode, BYTES framing."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from wattserve.core.datatypes import BY_NAME
from wattserve.core.errors import InvalidRequest
from wattserve.grpc.tensors import decode_raw, encode_raw


@pytest.mark.parametrize("name", [n for n in BY_NAME if n != "BYTES"])
def test_fixed_size_datatypes_round_trip_as_raw_bytes(name: str) -> None:
    datatype = BY_NAME[name]
    array = (np.arange(12) % 2 == 0) if name == "BOOL" else np.arange(12).astype(datatype.numpy)
    array = array.reshape(3, 4)
    raw = encode_raw(datatype, array)
    assert len(raw) == 12 * datatype.itemsize
    decoded = decode_raw("t", name, [3, 4], raw)
    assert decoded.dtype == datatype.numpy
    assert (decoded == array).all()


def test_outputs_encode_row_major_in_the_declared_datatype_whatever_their_layout() -> None:
    array = np.arange(6, dtype=np.float64).reshape(2, 3)
    transposed = array.T  # a Fortran-ordered view, as some graphs return
    assert not transposed.flags.c_contiguous
    raw = encode_raw(BY_NAME["FP32"], transposed)
    assert raw == np.array([[0, 3], [1, 4], [2, 5]], dtype=np.float32).tobytes()


def test_raw_decode_is_a_zero_copy_view() -> None:
    raw = np.arange(6, dtype=np.float32).tobytes()
    decoded = decode_raw("t", "FP32", [2, 3], raw)
    assert not decoded.flags.owndata
    assert not decoded.flags.writeable


def test_bytes_are_length_prefixed_little_endian() -> None:
    array = np.array([[b"ab", b""], ["\u00e9", b"xyz"]], dtype=object)
    raw = encode_raw(BY_NAME["BYTES"], array)
    assert raw == b"".join(
        struct.pack("<I", len(p)) + p for p in (b"ab", b"", "\u00e9".encode(), b"xyz")
    )
    assert decode_raw("t", "BYTES", [2, 2], raw).tolist() == [
        [b"ab", b""],
        ["\u00e9".encode(), b"xyz"],
    ]


def test_half_precision_raw_layout_matches_numpy() -> None:
    raw = np.array([1.5, -2.0], np.float16).tobytes()
    assert decode_raw("t", "FP16", [2], raw).tolist() == [1.5, -2.0]


@pytest.mark.parametrize(
    ("datatype", "shape", "raw", "message"),
    [
        ("FP32", [2], b"\0" * 7, "has 7 bytes of raw content, but shape [2] of FP32 needs 8"),
        ("BYTES", [1], b"\x05\0\0\0abc", "declares 5 bytes but only 3 remain"),
        ("BYTES", [2], b"\x00\0\0\0", "element 1 of 2 has no 4-byte length prefix"),
        ("BF16", [1], b"\0\0", "datatype 'BF16', which is not one wattserve serves"),
    ],
)
def test_malformed_raw_content_is_refused(
    datatype: str, shape: list[int], raw: bytes, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=r"^model 'm': input 'x'") as caught:
        decode_raw("model 'm': input 'x'", datatype, shape, raw)
    assert message in str(caught.value)
