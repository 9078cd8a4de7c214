"""Every malformed request gets the right status and a message naming model, input, expected, got;
nothing malformed reaches ONNX Runtime, and the server keeps serving."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from wattserve.protocol import pb, pb_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def stub(address: str) -> Iterator[Any]:
    with grpc.insecure_channel(address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def tensor(name: str, datatype: str, shape: list[int], **kwargs: Any) -> Any:
    return pb.ModelInferRequest.InferInputTensor(
        name=name, datatype=datatype, shape=shape, **kwargs
    )


def raw_request(model: str, *inputs: tuple[str, str, np.ndarray], **kwargs: Any) -> Any:
    return pb.ModelInferRequest(
        model_name=model,
        inputs=[tensor(n, d, list(a.shape)) for n, d, a in inputs],
        raw_input_contents=[a.tobytes() for _, _, a in inputs],
        **kwargs,
    )


def dense(rows: int = 2, width: int = 512, dtype: Any = np.float32) -> tuple[str, str, np.ndarray]:
    datatype = {np.float32: "FP32", np.float64: "FP64", np.int64: "INT64"}[dtype]
    return ("input", datatype, np.zeros((rows, width), dtype))


def bytes_payload(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


F32x4 = np.zeros((2, 4), np.float32)

CASES: dict[str, tuple[Any, grpc.StatusCode, list[str]]] = {
    "unknown model": (
        raw_request("nope", dense()),
        grpc.StatusCode.NOT_FOUND,
        ["unknown model 'nope'"],
    ),
    "unknown version": (
        raw_request("dense", dense(), model_version="9"),
        grpc.StatusCode.NOT_FOUND,
        ["model 'dense'", "no version '9'", "versions: 1"],
    ),
    "broken model": (
        raw_request("broken", ("x", "FP32", np.zeros((1, 3), np.float32))),
        grpc.StatusCode.UNAVAILABLE,
        ["model 'broken' is not ready", "ONNX Runtime cannot load"],
    ),
    "unknown input": (
        raw_request("dense", ("inptu", "FP32", np.zeros((2, 512), np.float32))),
        INVALID,
        ["model 'dense' version 1", "unknown input 'inptu'", "['input']"],
    ),
    "missing input": (
        raw_request("sum_model", ("a", "FP32", F32x4)),
        INVALID,
        ["model 'sum_model' version 1", "missing input 'b'"],
    ),
    "wrong datatype": (
        raw_request("dense", dense(dtype=np.float64)),
        INVALID,
        ["input 'input'", "expects datatype FP32, got FP64"],
    ),
    "wrong rank": (
        raw_request("dense", ("input", "FP32", np.zeros(512, np.float32))),
        INVALID,
        ["input 'input'", "expects shape [-1, 512]", "got [512]"],
    ),
    "wrong dims": (
        raw_request("dense", dense(width=500)),
        INVALID,
        ["model 'dense' version 1: input 'input'", "expects shape [-1, 512]", "got [2, 500]"],
    ),
    "batch too large": (
        raw_request("dense", dense(rows=129)),
        INVALID,
        ["model 'dense' version 1", "129 rows", "max_batch_size 128"],
    ),
    "inputs disagree on rows": (
        raw_request("sum_model", ("a", "FP32", F32x4), ("b", "FP32", np.zeros((3, 4), np.float32))),
        INVALID,
        ["input 'b' has 3 rows", "the other inputs have 2"],
    ),
    "zero rows": (
        raw_request("dense", dense(rows=0)),
        INVALID,
        ["model 'dense' version 1", "0 rows"],
    ),
    "unknown output": (
        pb.ModelInferRequest(
            model_name="sum_model",
            inputs=[tensor("a", "FP32", [2, 4]), tensor("b", "FP32", [2, 4])],
            raw_input_contents=[F32x4.tobytes()] * 2,
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="product")],
        ),
        INVALID,
        ["unknown output 'product'", "['sum', 'diff']"],
    ),
    "raw size mismatch": (
        pb.ModelInferRequest(
            model_name="dense",
            inputs=[tensor("input", "FP32", [2, 512])],
            raw_input_contents=[b"\0" * 4000],
        ),
        INVALID,
        ["model 'dense': input 'input'", "4000 bytes", "needs 4096"],
    ),
    "unknown datatype": (
        pb.ModelInferRequest(
            model_name="dense",
            inputs=[tensor("input", "FP33", [1, 512])],
            raw_input_contents=[b"\0" * 2048],
        ),
        INVALID,
        ["input 'input'", "datatype 'FP33'"],
    ),
    "negative dimension": (
        pb.ModelInferRequest(
            model_name="dense",
            inputs=[tensor("input", "FP32", [-1, 512])],
            raw_input_contents=[b""],
        ),
        INVALID,
        ["input 'input'", "must not be negative"],
    ),
    # Two negative dimensions multiply to a positive element count that the bytes match.
    "two negative dimensions": (
        pb.ModelInferRequest(
            model_name="dense",
            inputs=[tensor("input", "FP32", [-2, -512])],
            raw_input_contents=[b"\0" * 4096],
        ),
        INVALID,
        ["input 'input'", "shape [-2, -512]", "must not be negative"],
    ),
    # A zero dimension makes the count 0, so empty contents match, but numpy cannot shape it.
    "empty shape too large to address (raw)": (
        pb.ModelInferRequest(
            model_name="dense",
            inputs=[tensor("input", "FP32", [0, 2**62])],
            raw_input_contents=[b""],
        ),
        INVALID,
        ["input 'input'", "shape [0, 4611686018427387904]", "multiply past"],
    ),
    "empty shape too large to address (typed)": (
        pb.ModelInferRequest(
            model_name="dense",
            inputs=[tensor("input", "FP32", [2**62, 0], contents=pb.InferTensorContents())],
        ),
        INVALID,
        ["input 'input'", "shape [4611686018427387904, 0]", "multiply past"],
    ),
    "raw buffers fewer than inputs": (
        pb.ModelInferRequest(
            model_name="sum_model",
            inputs=[tensor("a", "FP32", [2, 4]), tensor("b", "FP32", [2, 4])],
            raw_input_contents=[F32x4.tobytes()],
        ),
        INVALID,
        ["2 inputs but 1 raw_input_contents"],
    ),
    "mixed raw and typed contents": (
        pb.ModelInferRequest(
            model_name="sum_model",
            inputs=[
                tensor("a", "FP32", [2, 4]),
                tensor(
                    "b", "FP32", [2, 4], contents=pb.InferTensorContents(fp32_contents=[0.0] * 8)
                ),
            ],
            raw_input_contents=[F32x4.tobytes()],
        ),
        INVALID,
        ["model 'sum_model'", "mixes raw_input_contents with typed contents"],
    ),
    "typed contents of the wrong count": (
        pb.ModelInferRequest(
            model_name="sum_model",
            inputs=[
                tensor(
                    "a", "FP32", [2, 4], contents=pb.InferTensorContents(fp32_contents=[0.0] * 7)
                ),
                tensor(
                    "b", "FP32", [2, 4], contents=pb.InferTensorContents(fp32_contents=[0.0] * 8)
                ),
            ],
        ),
        INVALID,
        ["input 'a'", "7 values in contents.fp32_contents", "needs 8"],
    ),
    "BYTES length prefix past the end": (
        pb.ModelInferRequest(
            model_name="identity_bytes",
            inputs=[tensor("x", "BYTES", [1, 2])],
            raw_input_contents=[bytes_payload(b"ok") + struct.pack("<I", 99) + b"short"],
        ),
        INVALID,
        ["model 'identity_bytes': input 'x'", "element 1 of 2 declares 99 bytes", "only 5 remain"],
    ),
    "BYTES truncated prefix": (
        pb.ModelInferRequest(
            model_name="identity_bytes",
            inputs=[tensor("x", "BYTES", [1, 2])],
            raw_input_contents=[bytes_payload(b"ok") + b"\x01\x00"],
        ),
        INVALID,
        ["input 'x'", "element 1 of 2 has no 4-byte length prefix"],
    ),
    "BYTES left over": (
        pb.ModelInferRequest(
            model_name="identity_bytes",
            inputs=[tensor("x", "BYTES", [1, 1])],
            raw_input_contents=[bytes_payload(b"ok", b"extra")],
        ),
        INVALID,
        ["input 'x'", "9 bytes left after the 1 BYTES elements"],
    ),
    "BYTES not UTF-8": (
        pb.ModelInferRequest(
            model_name="identity_bytes",
            inputs=[tensor("x", "BYTES", [1, 1])],
            raw_input_contents=[bytes_payload(b"\xff\xfe")],
        ),
        INVALID,
        ["model 'identity_bytes' version 1: input 'x'", "not valid UTF-8"],
    ),
    "negative timeout": (
        raw_request("dense", dense(), parameters={"timeout": pb.InferParameter(int64_param=-5)}),
        INVALID,
        ["parameter 'timeout'", "non-negative"],
    ),
}


def execution_count(stub: Any, model: str) -> int:
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model))
    return sum(m.execution_count for m in stats.model_stats)


@pytest.mark.parametrize("case", CASES)
def test_malformed_request_gets_status_and_a_message_naming_the_problem(
    stub: Any, case: str
) -> None:
    request, code, fragments = CASES[case]
    served = {m: execution_count(stub, m) for m in ("dense", "sum_model", "identity_bytes")}
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == code, caught.value.details()
    for fragment in fragments:
        assert fragment in caught.value.details()
    # Nothing reached ONNX Runtime, and the server keeps serving everyone else.
    assert {m: execution_count(stub, m) for m in served} == served
    ok = stub.ModelInfer(raw_request("dense", dense(rows=1)))
    assert len(ok.raw_output_contents[0]) == 512 * 4


def test_requests_that_cannot_be_decoded_count_as_failures_of_their_model(stub: Any) -> None:
    def failures() -> int:
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="identity_fp32"))
        return stats.model_stats[0].inference_stats.fail.count

    before = failures()
    bad = pb.ModelInferRequest(
        model_name="identity_fp32",
        inputs=[tensor("x", "FP32", [1, 3])],
        raw_input_contents=[b"\0" * 5],
    )
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(bad)
    assert failures() == before + 1


def test_typed_contents_are_accepted_for_every_typed_datatype(stub: Any) -> None:
    cases = [
        ("identity_fp32", "FP32", pb.InferTensorContents(fp32_contents=[1.5, -2, 3]), np.float32),
        ("identity_fp64", "FP64", pb.InferTensorContents(fp64_contents=[1.5, -2, 3]), np.float64),
        ("identity_int32", "INT32", pb.InferTensorContents(int_contents=[1, -2, 3]), np.int32),
        ("identity_int64", "INT64", pb.InferTensorContents(int64_contents=[1, -2, 3]), np.int64),
        ("identity_uint8", "UINT8", pb.InferTensorContents(uint_contents=[1, 2, 255]), np.uint8),
        (
            "identity_bool",
            "BOOL",
            pb.InferTensorContents(bool_contents=[True, False, True]),
            np.bool_,
        ),
        (
            "identity_bytes",
            "BYTES",
            pb.InferTensorContents(bytes_contents=[b"a", b"", b"xyz"]),
            object,
        ),
    ]
    for model, datatype, contents, dtype in cases:
        response = stub.ModelInfer(
            pb.ModelInferRequest(
                model_name=model, inputs=[tensor("x", datatype, [1, 3], contents=contents)]
            )
        )
        assert response.outputs[0].datatype == datatype
        if datatype == "BYTES":
            assert response.raw_output_contents[0] == bytes_payload(b"a", b"", b"xyz")
        else:
            values = np.frombuffer(response.raw_output_contents[0], dtype=dtype)
            field = contents.ListFields()[0][1]
            assert (
                values.tolist() == [dtype(v) for v in field]
                if dtype is not np.bool_
                else values.tolist() == list(field)
            )


def test_fp16_cannot_be_sent_as_typed_contents(stub: Any) -> None:
    request = pb.ModelInferRequest(
        model_name="identity_fp16",
        inputs=[
            tensor("x", "FP16", [1, 3], contents=pb.InferTensorContents(fp32_contents=[1, 2, 3]))
        ],
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == INVALID
    assert "FP16 can only be sent as raw_input_contents" in caught.value.details()


@pytest.mark.parametrize("tenant", ["has space", "x" * 65, "acme/eu", ""])
def test_malformed_tenant_header_is_refused_naming_the_rule(stub: Any, tenant: str) -> None:
    metadata = [("x-wattserve-tenant", tenant)]
    with pytest.raises(grpc.RpcError) as unary:
        stub.ModelInfer(raw_request("dense", dense(rows=1)), metadata=metadata)
    with pytest.raises(grpc.RpcError) as stream:
        list(stub.ModelStreamInfer(iter([raw_request("dense", dense(rows=1))]), metadata=metadata))
    for caught in (unary, stream):
        assert caught.value.code() == INVALID
        assert "x-wattserve-tenant must be 1 to 64 characters" in caught.value.details()
