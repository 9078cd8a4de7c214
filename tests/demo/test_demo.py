"""The built-in demo repository: built by our own code, deterministic, built once."""

from __future__ import annotations

import hashlib
from pathlib import Path

from wattserve.demo import DEMO_MODEL_NAMES, ensure_demo_repository
from wattserve.demo._models import DEMO_MODELS


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_demo_build_is_deterministic_and_not_repeated(
    demo_repository: Path, tmp_path: Path
) -> None:
    again = ensure_demo_repository(tmp_path / "demo")
    assert digests(again) == digests(demo_repository)
    assert tuple(m.name for m in DEMO_MODELS) == DEMO_MODEL_NAMES
    assert {p.name for p in again.iterdir() if p.is_dir()} == set(DEMO_MODEL_NAMES)
    model = again / "dense" / "1" / "model.onnx"
    before = model.stat().st_mtime_ns
    ensure_demo_repository(tmp_path / "demo")
    assert model.stat().st_mtime_ns == before
