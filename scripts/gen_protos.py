"""Generate the Python stubs for protos/atelier/v1 into atelier/v1 and the API reference docs/api.md.

`--check` regenerates both into a temporary folder and fails if the committed copies differ.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
STUBS = ROOT / "atelier" / "v1"
API_DOC = ROOT / "docs" / "api.md"


def generate(out: Path) -> list[Path]:
    """Stubs and api.md into out/atelier/v1; returns the files written."""
    sources = sorted(PROTOS.glob("atelier/v1/*.proto"))
    descriptors = out / "descriptors.pb"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        f"--descriptor_set_out={descriptors}",
        "--include_source_info",
    ]
    if protoc.main([*args, *[str(s) for s in sources]]) != 0:
        raise SystemExit("protoc failed")
    package = out / "atelier" / "v1"
    (package / "__init__.py").write_text(
        '"""Generated protobuf and gRPC stubs for atelier.v1 (do not edit)."""\n'
    )
    (package / "api.md").write_text(api_reference(descriptors))
    return sorted(p for p in package.iterdir() if p.is_file())


def _comment(locations: dict, path: tuple[int, ...]) -> str:
    location = locations.get(path)
    text = (location.leading_comments or location.trailing_comments) if location else ""
    return " ".join(line.strip() for line in text.strip().splitlines()).replace("|", "\\|")


def _type(field: descriptor_pb2.FieldDescriptorProto) -> str:
    kind = (
        field.type_name.split(".")[-1]
        if field.type_name
        else field.Type.Name(field.type)[5:].lower()
    )
    return ("repeated " if field.label == field.LABEL_REPEATED else "") + kind


def api_reference(descriptor_set: Path) -> str:
    """Every service, method, message, field and enum, with the comments written in the protos."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file
    lines = [
        "# API reference (atelier.v1)",
        "",
        "Generated from `protos/` by `make protos`; do not edit.",
        "",
    ]
    for proto in sorted(files, key=lambda f: f.name):
        locations = {tuple(loc.path): loc for loc in proto.source_code_info.location}
        lines += [f"## `{proto.name}`", ""]
        for s_index, service in enumerate(proto.service):
            lines += [f"### service `{service.name}`", ""]
            for m_index, method in enumerate(service.method):
                doc = _comment(locations, (6, s_index, 2, m_index))
                signature = f"{method.name}({method.input_type.split('.')[-1]}) returns ({method.output_type.split('.')[-1]})"
                lines.append(f"- `{signature}`" + (f": {doc}" if doc else ""))
            lines.append("")
        for e_index, enum in enumerate(proto.enum_type):
            doc = _comment(locations, (5, e_index))
            lines += [f"### enum `{enum.name}`", "", *([doc, ""] if doc else [])]
            lines += ["| value | number | meaning |", "| --- | --- | --- |"]
            for v_index, value in enumerate(enum.value):
                lines.append(
                    f"| `{value.name}` | {value.number} | {_comment(locations, (5, e_index, 2, v_index))} |"
                )
            lines.append("")
        for m_index, message in enumerate(proto.message_type):
            doc = _comment(locations, (4, m_index))
            lines += [f"### message `{message.name}`", "", *([doc, ""] if doc else [])]
            lines += ["| field | type | number | meaning |", "| --- | --- | --- | --- |"]
            for f_index, field in enumerate(message.field):
                meaning = _comment(locations, (4, m_index, 2, f_index))
                lines.append(f"| `{field.name}` | {_type(field)} | {field.number} | {meaning} |")
            lines.append("")
    return "\n".join(lines)


def _destination(path: Path) -> Path:
    return API_DOC if path.name == "api.md" else STUBS / path.name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        if not args.check:
            for path in fresh:
                _destination(path).write_bytes(path.read_bytes())
            print(f"stubs written to {STUBS}, API reference to {API_DOC}")
            return 0
        stale = [
            p.name
            for p in fresh
            if not _destination(p).exists() or not filecmp.cmp(p, _destination(p), shallow=False)
        ]
        extra = sorted({p.name for p in STUBS.glob("*_pb2*.py*")} - {p.name for p in fresh})
    if stale or extra:
        print(
            f"generated files drifted from protos/: changed {stale}, unexpected {extra}; run `make protos`"
        )
        return 1
    print("stubs and docs/api.md match protos/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
