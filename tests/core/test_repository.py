"""Reading the model repository: folders, versions, version policies, config files."""

from __future__ import annotations

from pathlib import Path

import pytest

from wattserve.core.config import ModelConfig, read_config
from wattserve.core.errors import InvalidRequest, ModelLoadError, ModelNotFound
from wattserve.core.repository import Repository


def make_versions(root: Path, name: str, versions: list[str], config: str | None = None) -> None:
    for v in versions:
        (root / name / v).mkdir(parents=True)
        (root / name / v / "model.onnx").write_bytes(b"onnx")
    if config is not None:
        (root / name / "config.toml").write_text(config)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [(None, [1, 2, 10]), ('"all"', [1, 2, 10]), ('"latest"', [10]), ("[2, 1]", [1, 2])],
)
def test_version_policy_selects_versions(
    tmp_path: Path, policy: str | None, expected: list[int]
) -> None:
    make_versions(
        tmp_path,
        "m",
        ["1", "2", "10", "notes"],
        None if policy is None else f"version_policy = {policy}\n",
    )
    source = Repository(tmp_path).read("m")
    assert list(source.versions) == expected
    assert source.versions[expected[0]] == tmp_path / "m" / str(expected[0]) / "model.onnx"


def test_version_policy_naming_a_missing_version_is_a_load_error(tmp_path: Path) -> None:
    make_versions(tmp_path, "m", ["1"], "version_policy = [3]\n")
    with pytest.raises(ModelLoadError, match=r"version_policy lists versions \[3\] .*found \[1\]"):
        Repository(tmp_path).read("m")


def test_model_without_versions_is_a_load_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "1").mkdir(parents=True)
    with pytest.raises(ModelLoadError, match=r"model 'empty': no version folder with a model.onnx"):
        Repository(tmp_path).read("empty")


@pytest.mark.parametrize("name", ["..", "../x", "a/b", "/etc", "", ".hidden/../.."])
def test_names_that_leave_the_repository_are_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / "repo").mkdir()
    with pytest.raises(
        InvalidRequest, match="must be a folder directly inside the model repository"
    ):
        Repository(tmp_path / "repo").model_dir(name)


def test_unknown_model_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="model 'ghost' is not in the model repository"):
        Repository(tmp_path).read("ghost")
    assert not Repository(tmp_path).has_model("ghost")


def test_model_names_are_the_visible_folders(tmp_path: Path) -> None:
    make_versions(tmp_path, "b", ["1"])
    make_versions(tmp_path, "a", ["1"])
    (tmp_path / ".cache").mkdir()
    (tmp_path / "README").write_text("hi")
    assert Repository(tmp_path).model_names() == ["a", "b"]


def test_config_defaults_and_every_problem_named(tmp_path: Path) -> None:
    assert read_config(tmp_path) == ModelConfig()
    (tmp_path / "config.toml").write_text(
        'max_batch_size = -1\ndevice = "tpu"\n[dynamic_batching]\nmax_queue_size = 0\n'
    )
    with pytest.raises(ModelLoadError) as caught:
        read_config(tmp_path)
    message = str(caught.value)
    for fragment in (
        "max_batch_size",
        "device",
        "dynamic_batching.max_queue_size",
        "config.toml is invalid",
    ):
        assert fragment in message
    (tmp_path / "config.toml").write_text("max_batch_size = [")
    with pytest.raises(ModelLoadError, match="is not valid TOML"):
        read_config(tmp_path)
