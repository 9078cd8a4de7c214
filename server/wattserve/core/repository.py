"""The model repository on disk: `<repo>/<model>/<version>/model.onnx` plus optional config.toml."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wattserve.core.config import ModelConfig, read_config
from wattserve.core.errors import InvalidRequest, ModelLoadError, ModelNotFound

MODEL_FILENAME = "model.onnx"


@dataclass(frozen=True, slots=True)
class ModelSource:
    """A model as found on disk: its config and the versions to serve."""

    name: str
    directory: Path
    config: ModelConfig
    versions: dict[int, Path]
    """Version number → model.onnx path, only the versions the version policy selects."""


class Repository:
    """Reads models from one directory and never from outside it."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def model_names(self) -> list[str]:
        if not self.root.is_dir():
            raise ModelLoadError(f"model repository {self.root} does not exist or is not a folder")
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )

    def model_dir(self, name: str) -> Path:
        """The folder of model `name`, refusing names that would leave the repository."""
        candidate = (self.root / name).resolve()
        if not name or name != candidate.name or candidate.parent != self.root:
            raise InvalidRequest(
                f"model name '{name}' must be a folder directly inside the model repository "
                f"{self.root}"
            )
        if not candidate.is_dir():
            raise ModelNotFound(f"model '{name}' is not in the model repository {self.root}")
        return candidate

    def has_model(self, name: str) -> bool:
        try:
            self.model_dir(name)
        except (InvalidRequest, ModelNotFound):
            return False
        return True

    def read(self, name: str) -> ModelSource:
        directory = self.model_dir(name)
        config = read_config(directory)
        found = {
            int(p.name): p / MODEL_FILENAME
            for p in directory.iterdir()
            if p.is_dir()
            and p.name.isdigit()
            and int(p.name) > 0
            and (p / MODEL_FILENAME).is_file()
        }
        if not found:
            raise ModelLoadError(
                f"model '{name}': no version folder with a {MODEL_FILENAME} in {directory} "
                f"(expected {directory}/1/{MODEL_FILENAME})"
            )
        policy = config.version_policy
        if policy == "latest":
            wanted = [max(found)]
        elif policy == "all":
            wanted = sorted(found)
        else:
            missing = sorted(set(policy) - set(found))
            if missing:
                raise ModelLoadError(
                    f"model '{name}': version_policy lists versions {missing} that are not in "
                    f"{directory} (found {sorted(found)})"
                )
            wanted = sorted(policy)
        return ModelSource(name, directory, config, {v: found[v] for v in wanted})
