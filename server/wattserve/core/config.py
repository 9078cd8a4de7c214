"""The per-model configuration file (`<repo>/<model>/config.toml`) and its defaults."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wattserve.core.errors import ModelLoadError

CONFIG_FILENAME = "config.toml"


class DynamicBatchingConfig(BaseModel):
    """How requests are merged into batches. Sizes count rows (the first dimension)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    max_queue_delay_us: Annotated[int, Field(ge=0, le=10_000_000)] = 500
    """Longest a queued request may be held back to grow its batch. The batcher only spends it
    while requests are arriving fast enough to fill the batch (see docs/batching.md)."""
    preferred_batch_sizes: list[Annotated[int, Field(ge=1)]] = []
    """Batch sizes worth dispatching at once; a batch is sent as soon as it reaches the smallest,
    and never grows past the largest."""
    max_queue_size: Annotated[int, Field(ge=1)] = 1024
    """Requests that may wait for this model version; more are refused with RESOURCE_EXHAUSTED."""


class ModelConfig(BaseModel):
    """Everything optional about serving one model; the signature always comes from the graph."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    max_batch_size: Annotated[int, Field(ge=0)] | None = None
    """Rows per batch; 0 disables batching. Default: 64 when every input and output has a dynamic
    first dimension, else 0."""
    instances: Annotated[int, Field(ge=1, le=64)] = 1
    """ONNX Runtime sessions of each version, each run on its own executor thread."""
    device: Literal["cpu", "cuda"] = "cpu"
    device_id: Annotated[int, Field(ge=0)] = 0
    """CUDA device ordinal when device = "cuda"."""
    intra_op_threads: Annotated[int, Field(ge=0)] = 1
    """ONNX Runtime threads inside one operator, per instance (0 lets ONNX Runtime choose)."""
    inter_op_threads: Annotated[int, Field(ge=0)] = 1
    """ONNX Runtime threads across operators, per instance (0 lets ONNX Runtime choose)."""
    graph_optimization_level: Literal["disabled", "basic", "extended", "all"] = "all"
    run_on: Literal["thread", "loop", "auto"] = "auto"
    """Where ONNX Runtime runs a batch. "thread": on the model's executor thread, while the event
    loop goes on serving (and queuing requests into the next batch). "loop": on the event loop
    itself, with no hand-off (which costs more than a small model's batch), but nothing else is
    served meanwhile. "auto" (the default), for a CPU model with one instance and one intra-op
    thread: "loop" for each batch estimated from the warm-up runs to take under 1 ms (one-core
    server) or 250 µs (more cores), "thread" for bigger ones; "thread" for other models. See
    docs/performance.md for what each measured."""
    warmup: bool = True
    """Run each instance on zeros (one row, then a full batch) before the model is marked ready.
    The timings decide where run_on = "auto" runs each batch; without them, on the thread."""
    version_policy: Literal["all", "latest"] | list[Annotated[int, Field(ge=1)]] = "all"
    """Which versions to serve: all found, only the latest, or the listed ones."""
    dynamic_batching: DynamicBatchingConfig = DynamicBatchingConfig()


DEFAULT_MAX_BATCH_SIZE = 64


def read_config(model_dir: Path) -> ModelConfig:
    """The model's config.toml, or the defaults when there is none."""
    path = model_dir / CONFIG_FILENAME
    if not path.exists():
        return ModelConfig()
    try:
        return ModelConfig.model_validate(tomllib.loads(path.read_text()))
    except tomllib.TOMLDecodeError as exc:
        raise ModelLoadError(f"model '{model_dir.name}': {path} is not valid TOML: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ModelLoadError(f"model '{model_dir.name}': {path} is invalid: {problems}") from exc
