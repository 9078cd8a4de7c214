"""Model directory layout: ONNX model defaults, model.onnx files and config.toml rendering."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # onnx is the `demo` extra: imported only when a model is built
    import onnx

logger = logging.getLogger(__name__)

# Opset 17 is old enough for every ONNX Runtime the project supports and new enough for
# the operators the demo and test models use; IR 9 is the matching IR (onnx 1.14).
OPSET = 17
IR_VERSION = 9
PRODUCER_NAME = "wattserve"

MODEL_FILENAME = "model.onnx"
CONFIG_FILENAME = "config.toml"


def make_model(graph: onnx.GraphProto, *, doc_string: str = "") -> onnx.ModelProto:
    """Wrap `graph` in a checked model using the project's opset and IR version."""
    import onnx

    model = onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name=PRODUCER_NAME,
        doc_string=doc_string,
    )
    onnx.checker.check_model(model)
    return model


def save_model(
    model: onnx.ModelProto,
    model_dir: Path,
    version: int = 1,
    config_toml: str | None = None,
) -> Path:
    """Write `<model_dir>/<version>/model.onnx` (and `<model_dir>/config.toml` when given).

    Returns the path of the written model file.
    """
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    model_path = version_dir / MODEL_FILENAME
    model_path.write_bytes(model.SerializeToString())
    if config_toml is not None:
        (model_dir / CONFIG_FILENAME).write_text(config_toml, encoding="utf-8")
    logger.debug("wrote %s", model_path)
    return model_path


def render_config(
    *,
    max_batch_size: int,
    max_queue_delay_us: int,
    max_queue_size: int,
    preferred_batch_sizes: Sequence[int] = (),
    comment: str = "",
) -> str:
    """Render a config.toml with every key of the server's schema spelled out."""
    lines: list[str] = []
    if comment:
        lines += [f"# {line}" if line else "#" for line in comment.splitlines()]
        lines.append("")
    lines += [
        f"max_batch_size = {max_batch_size}",
        "instances = 1",
        'device = "cpu"',
        # One thread per op keeps several instances from fighting over the same cores;
        # throughput comes from batching and instances instead.
        "intra_op_threads = 1",
        "inter_op_threads = 1",
        "warmup = true",
        "",
        "[dynamic_batching]",
        f"max_queue_delay_us = {max_queue_delay_us}",
    ]
    if preferred_batch_sizes:
        sizes = ", ".join(str(size) for size in preferred_batch_sizes)
        lines.append(f"preferred_batch_sizes = [{sizes}]")
    lines.append(f"max_queue_size = {max_queue_size}")
    return "\n".join(lines) + "\n"


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under `root` to stable storage.

    Done before the completion marker is written so that a power loss cannot leave a
    marked repository whose model files were still only in the page cache.
    """
    for dirpath, _dirnames, filenames in os.walk(root):
        for filename in filenames:
            _fsync_path(Path(dirpath) / filename, os.O_RDONLY)
        _fsync_path(Path(dirpath), os.O_RDONLY | os.O_DIRECTORY)


def fsync_dir(path: Path) -> None:
    """Flush a directory entry change (a rename inside `path`) to stable storage."""
    _fsync_path(path, os.O_RDONLY | os.O_DIRECTORY)


def _fsync_path(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
