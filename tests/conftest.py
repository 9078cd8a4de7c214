"""Fixtures: a model repository (demo + behaviour-named test models) and a real server on port 0."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import models
from tests.support import ServerProcess, run_server
from wattserve.demo import ensure_demo_repository

IDENTITY_TYPES = ("FP32", "FP16", "FP64", "INT32", "INT64", "UINT8", "BOOL", "BYTES")


@pytest.fixture(scope="session")
def demo_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_demo_repository(tmp_path_factory.mktemp("demo") / "repository")


@pytest.fixture(scope="session")
def repository(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo models plus every test model, broken ones included."""
    root = tmp_path_factory.mktemp("models")
    for model_dir in demo_repository.iterdir():
        if model_dir.is_dir():
            shutil.copytree(model_dir, root / model_dir.name, copy_function=os.link)
    for datatype in IDENTITY_TYPES:
        models.identity_model(root, f"identity_{datatype.lower()}", datatype)
    for build in (
        models.two_input_model,
        models.failing_model,
        models.bad_split_model,
        models.fixed_shape_model,
        models.versioned_model,
        models.broken_file_model,
        models.broken_config_model,
    ):
        build(root)
    return root


@pytest.fixture(scope="session")
def server(repository: Path) -> Iterator[ServerProcess]:
    with run_server("--repository", str(repository)) as process:
        yield process


@pytest.fixture(scope="session")
def address(server: ServerProcess) -> str:
    return server.address
