"""Generate wattserve's Python protocol code from proto/*.proto (and check it for drift).

Usage: python proto/generate.py          # rewrite server/wattserve/protocol/
       python proto/generate.py --check  # exit 1 if the committed code differs from a fresh build

Our messages share full names (`inference.ModelInferRequest`, ...) with Triton's, so registering
them in protobuf's default descriptor pool would collide with tritonclient's copy in any process
that imports both (a user's service, our tests). The generated modules are therefore rewritten to
register into a private pool (`wattserve.protocol._pool.POOL`) and to import each other relative
to their package. The wire format is unchanged: pools only affect in-process lookups.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parent
OUT_DIR = PROTO_DIR.parent / "server" / "wattserve" / "protocol"
PROTOS = ["model_config.proto", "grpc_service.proto"]
MODULES = [p.removesuffix(".proto") for p in PROTOS]

_REWRITES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"_descriptor_pool\.Default\(\)"), "_pool.POOL"),
    (
        re.compile(r"^(# @@protoc_insertion_point\(imports\))$", re.M),
        r"from wattserve.protocol import _pool\n\1",
    ),
    *(
        (re.compile(rf"^import {m}_pb2 as ", re.M), f"from wattserve.protocol import {m}_pb2 as ")
        for m in MODULES
    ),
]


def _generate(out: Path) -> dict[str, str]:
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(PROTO_DIR / p) for p in PROTOS),
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    files: dict[str, str] = {}
    # model_config.proto defines no service: its empty *_pb2_grpc.py would only be clutter.
    (out / "model_config_pb2_grpc.py").unlink()
    for path in sorted(out.iterdir()):
        text = path.read_text()
        for pattern, replacement in _REWRITES:
            text = pattern.sub(replacement, text)
        files[path.name] = text
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the code on disk is stale")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as tmp:
        fresh = _generate(Path(tmp))
    stale = []
    for name, text in fresh.items():
        target = OUT_DIR / name
        current = target.read_text() if target.exists() else ""
        if current == text:
            continue
        stale.append(name)
        if check:
            sys.stdout.writelines(
                difflib.unified_diff(
                    current.splitlines(keepends=True), text.splitlines(keepends=True), name, name
                )
            )
        else:
            target.write_text(text)
    if check and stale:
        print(f"stale generated code: {', '.join(stale)}; run `make proto`", file=sys.stderr)
        return 1
    if not check:
        print(f"generated {len(fresh)} files in {OUT_DIR}, {len(stale)} changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
