"""Generate the Python stubs for protos/atelier/v1 into atelier/v1 (or --out), with grpcio-tools.

`--check` regenerates into a temporary folder and fails if the committed stubs differ.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"


def generate(out: Path) -> list[Path]:
    sources = sorted(PROTOS.glob("atelier/v1/*.proto"))
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
    ]
    if protoc.main([*args, *[str(s) for s in sources]]) != 0:
        raise SystemExit("protoc failed")
    package = out / "atelier" / "v1"
    (package / "__init__.py").write_text(
        '"""Generated protobuf and gRPC stubs for atelier.v1 (do not edit)."""\n'
    )
    return sorted(package.iterdir())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    target = ROOT / "atelier" / "v1"
    if not args.check:
        with tempfile.TemporaryDirectory() as tmp:
            for path in generate(Path(tmp)):
                if path.is_file():
                    (target / path.name).write_bytes(path.read_bytes())
        print(f"stubs written to {target}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = [p for p in generate(Path(tmp)) if p.is_file()]
        stale = [
            p.name
            for p in fresh
            if not (target / p.name).exists() or not filecmp.cmp(p, target / p.name, shallow=False)
        ]
        extra = sorted({p.name for p in target.glob("*_pb2*.py*")} - {p.name for p in fresh})
    if stale or extra:
        print(
            f"generated stubs drifted from protos/: changed {stale}, unexpected {extra}; run `make protos`"
        )
        return 1
    print("stubs match protos/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
