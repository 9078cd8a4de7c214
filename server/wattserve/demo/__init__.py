"""The built-in demo model repository: built locally on first start, never downloaded."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from wattserve.demo._files import (
    CONFIG_FILENAME,
    IR_VERSION,
    MODEL_FILENAME,
    OPSET,
    fsync_dir,
    fsync_tree,
    make_model,
    save_model,
)

logger = logging.getLogger(__name__)

# Bump whenever a demo model or its config changes: repositories carrying another
# version are rebuilt on the next start.
BUILDER_VERSION = "wattserve-demo/3"
MARKER_FILENAME = ".wattserve-demo"

__all__ = [
    "BUILDER_VERSION",
    "DEMO_MODEL_NAMES",
    "IR_VERSION",
    "MARKER_FILENAME",
    "OPSET",
    "ensure_demo_repository",
    "make_model",
    "save_model",
]

# Kept literal so that checking a built repository needs none of the `demo` extra's packages;
# tests/demo checks it against the builders.
DEMO_MODEL_NAMES: tuple[str, ...] = ("tabular_classifier", "dense", "text_classifier")


def ensure_demo_repository(root: Path) -> Path:
    """Build the demo repository under `root` unless a complete one of the current builder
    version is already there; return root.

    Safe to call on every start and from several processes at once: builds are serialised
    by a lock file next to `root`, made in a hidden sibling directory and swapped in by
    rename only once complete, so a crash at any point leaves either the previous state
    or a repository that the next call rebuilds.
    """
    if _is_complete(root):
        logger.debug("demo repository at %s is up to date", root)
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(root):
        # Another process may have finished the build while this one waited for the lock.
        if _is_complete(root):
            return root
        _refuse_foreign_directory(root)
        _remove_leftovers(root)
        started = time.perf_counter()
        logger.info("building demo model repository at %s", root)
        try:
            from wattserve.demo._models import DEMO_MODELS
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                f"building the demo repository needs {exc.name}: install wattserve[demo], "
                f"or serve your own models with --repository DIR"
            ) from exc
        staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(root), dir=root.parent))
        try:
            for model in DEMO_MODELS:
                save_model(model.build(), staging / model.name, config_toml=model.config_toml)
            fsync_tree(staging)
            # The marker goes last: its presence is what declares the build complete.
            (staging / MARKER_FILENAME).write_text(BUILDER_VERSION + "\n", encoding="utf-8")
            fsync_tree(staging)
            _install(staging, root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        logger.info(
            "built demo repository (%s) in %.1f s",
            ", ".join(DEMO_MODEL_NAMES),
            time.perf_counter() - started,
        )
    return root


def _is_complete(root: Path) -> bool:
    try:
        marker = (root / MARKER_FILENAME).read_text(encoding="utf-8").strip()
    except OSError:
        return False
    if marker != BUILDER_VERSION:
        logger.info("demo repository at %s has builder %r, rebuilding", root, marker)
        return False
    # A user may have deleted a model by hand; the marker alone would hide that.
    for name in DEMO_MODEL_NAMES:
        model_dir = root / name
        if not (model_dir / "1" / MODEL_FILENAME).is_file():
            return False
        if not (model_dir / CONFIG_FILENAME).is_file():
            return False
    return True


def _refuse_foreign_directory(root: Path) -> None:
    # Replacing a directory is only safe when it is one this builder made: without the
    # marker a non-empty directory may well hold the user's own models.
    if not root.exists() or (root / MARKER_FILENAME).exists():
        return
    if not root.is_dir() or any(root.iterdir()):
        raise FileExistsError(
            f"{root} exists and is not a wattserve demo repository "
            f"(no {MARKER_FILENAME} marker); refusing to replace it"
        )


def _staging_prefix(root: Path) -> str:
    return f".{root.name}.building-"


def _retired_prefix(root: Path) -> str:
    return f".{root.name}.old-"


@contextlib.contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    # Serialises builders of the same root (several server processes starting at once);
    # the kernel drops the lock if the holder dies, so a crash never wedges a later start.
    lock_path = root.parent / f".{root.name}.lock"
    with lock_path.open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _remove_leftovers(root: Path) -> None:
    # Only called under the build lock, so no live builder owns these directories:
    # they are what a crash mid-build or mid-swap left behind.
    for prefix in (_staging_prefix(root), _retired_prefix(root)):
        for leftover in root.parent.glob(prefix + "*"):
            logger.info("removing leftover %s from an interrupted build", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


def _install(staging: Path, root: Path) -> None:
    """Put the finished `staging` tree at `root`, replacing whatever demo build is there."""
    if root.is_dir() and os.path.ismount(root):
        # A mount point (a container volume, say) cannot be renamed away.
        _install_in_place(staging, root)
        return
    retired: Path | None = None
    if root.exists() or root.is_symlink():
        retired = Path(tempfile.mkdtemp(prefix=_retired_prefix(root), dir=root.parent))
        retired.rmdir()
        root.replace(retired)
    # A crash between the two renames leaves no root: the next start simply rebuilds.
    staging.replace(root)
    fsync_dir(root.parent)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


def _install_in_place(staging: Path, root: Path) -> None:
    # Not atomic, but crash-safe all the same: the marker is removed first and moved in
    # last, so an interrupted swap is seen as incomplete and rebuilt on the next start.
    (root / MARKER_FILENAME).unlink(missing_ok=True)
    fsync_dir(root)
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    for child in sorted(staging.iterdir(), key=lambda path: path.name == MARKER_FILENAME):
        # shutil.move, not a rename: the staging directory is on the parent filesystem.
        shutil.move(child, root / child.name)
    fsync_dir(root)
    staging.rmdir()
