"""Every server setting in one typed place: `wattserve serve` flags and WATTSERVE_* variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_demo_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "wattserve" / "demo-repository"


class ServeSettings(BaseSettings):
    """Settings of `wattserve serve`. Each can be set as a flag or a WATTSERVE_<NAME> variable."""

    model_config = SettingsConfigDict(
        env_prefix="WATTSERVE_", extra="forbid", frozen=True, use_attribute_docstrings=True
    )

    repository: Path | None = None
    """Model repository folder (<repo>/<model>/<version>/model.onnx). Default: the built-in demo
    repository, built on first start in --demo-dir."""
    demo_dir: Path = Field(default_factory=default_demo_dir)
    """Where the demo repository is built and kept."""
    host: str = "127.0.0.1"
    """Address to listen on; 0.0.0.0 or :: for every interface."""
    port: Annotated[int, Field(ge=0, le=65535)] = 8001
    """gRPC port; 0 picks a free one (the ready log line says which)."""
    model_control_mode: Literal["none", "explicit"] = "none"
    """none: serve every model in the repository, refuse load/unload RPCs. explicit: serve only
    --load-model models and accept RepositoryModelLoad/Unload."""
    load_model: list[str] = []
    """With explicit model control: models to load at start ("*" for all). Repeatable."""
    max_message_bytes: Annotated[int, Field(ge=1024, le=2**31 - 1)] = 2**31 - 1
    """Largest gRPC message accepted or sent, in bytes."""
    grace_period_s: Annotated[float, Field(ge=0)] = 10.0
    """On shutdown, how long in-flight requests may take to finish before they are cancelled."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Least severe log messages written to stderr."""
