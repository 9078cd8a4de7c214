"""Merge and split on axis 0, and the split's post-condition."""

from __future__ import annotations

import numpy as np
import pytest

from wattserve.batching.tensors import merge, split
from wattserve.core.errors import ExecutionError


def test_a_lone_request_passes_through_uncopied() -> None:
    part = {"x": np.ones((2, 3))}
    assert merge([part]) is part


def test_merge_concatenates_each_input_in_order() -> None:
    parts = [{"x": np.full((n, 2), n), "y": np.full((n,), -n)} for n in (1, 3, 2)]
    merged = merge(parts)
    assert merged["x"].shape == (6, 2)
    assert merged["x"][:, 0].tolist() == [1, 3, 3, 3, 2, 2]
    assert merged["y"].tolist() == [-1, -3, -3, -3, -2, -2]


@pytest.mark.parametrize("rows", [[1], [1, 1], [3, 1, 2], [5, 0, 2]])
def test_split_gives_each_caller_its_rows(rows: list[int]) -> None:
    total = sum(rows)
    outputs = {"a": np.arange(total * 2).reshape(total, 2), "b": np.arange(total)}
    parts = split(outputs, rows, label="model 'm' version 1")
    assert [p["a"].shape[0] for p in parts] == rows
    assert np.concatenate([p["b"] for p in parts]).tolist() == list(range(total))


@pytest.mark.parametrize("shape", [(4, 2), (2,), ()])
def test_split_refuses_outputs_whose_first_dimension_is_not_the_rows(
    shape: tuple[int, ...],
) -> None:
    with pytest.raises(ExecutionError) as caught:
        split({"ok": np.zeros((3, 1)), "bad": np.zeros(shape)}, [1, 2], label="model 'm' version 1")
    message = str(caught.value)
    assert "model 'm' version 1: output 'bad'" in message
    assert f"has shape {list(shape)}, expected a first dimension of 3" in message
