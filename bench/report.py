"""Merge one benchmark's figures into a docs/<report>.json and re-render docs/<report>.md from it.

Two reports: `benchmarks` (speed and memory) and `reliability` (security, chaos, soak, fuzzing).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def update(key: str, figures: dict, command: str, report: str = "benchmarks") -> dict:
    path = DOCS / f"{report}.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = {
        **figures,
        "command": command,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
    }
    DOCS.mkdir(exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True))
    (DOCS / f"{report}.md").write_text(render(data, report))
    return data


def merge(key: str, part: str, figures: dict, command: str, report: str = "benchmarks") -> dict:
    """Merge one benchmark's figures into a section that several benchmarks share (`ops`): its
    figures join the section's, and `commands[part]` names the command that measured them."""
    path = DOCS / f"{report}.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    section = data.get(key, {})
    section.update(figures)
    section["commands"] = {**section.get("commands", {}), part: command}
    section["command"] = "; ".join(section["commands"].values())
    section["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    section["machine"] = machine()
    data[key] = section
    DOCS.mkdir(exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True))
    (DOCS / f"{report}.md").write_text(render(data, report))
    return data


def _flatten(prefix: str, value, rows: list[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if k not in ("command", "commands", "machine", "measured_at", "notes"):
                _flatten(f"{prefix}.{k}" if prefix else k, v, rows)
    elif isinstance(value, float):
        rows.append((prefix, f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"))
    else:
        rows.append((prefix, str(value)))


def render(data: dict, report: str = "benchmarks") -> str:
    lines = [
        f"# {report.capitalize()}",
        "",
        f"Generated from `docs/{report}.json` by the benchmark scripts in `bench/`; every figure below",
        "comes from the command named in its section. Ratios compare against a baseline measured in the",
        "same run, because these machines are noisy.",
        "",
    ]
    for key in sorted(data):
        section = data[key]
        lines += [
            f"## `{key}`",
            "",
            f"Command: `{section.get('command', '?')}`  ",
            f"Measured: {section.get('measured_at', '?')} on {section.get('machine', {}).get('cpus', '?')} CPUs",
            "",
        ]
        if section.get("notes"):
            lines += [section["notes"], ""]
        lines += ["| figure | value |", "| --- | --- |"]
        rows: list[tuple[str, str]] = []
        _flatten("", section, rows)
        lines += [f"| {name} | {value} |" for name, value in rows]
        lines.append("")
    return "\n".join(lines)
