"""What every benchmark report starts with: the machine and the versions, measured in the same run."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

_PACKAGES = ("numpy", "onnxruntime", "torch", "pymilvus", "milvus-lite", "milvus", "faiss-cpu", "scikit-learn",
             "grpcio", "redis")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions(packages: tuple[str, ...] = _PACKAGES) -> dict[str, str]:
    out = {}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def header(title: str) -> str:
    """Markdown header: title, date, machine, versions."""
    vers = ", ".join(f"{k} {v}" for k, v in versions().items())
    return (
        f"# {title}\n\n"
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}\n"
        f"- machine: {os.cpu_count()} CPUs, {cpu_model()}, Python {platform.python_version()}\n"
        f"- versions: {vers}\n"
        f"- GPU: none lent to this run (CPU only)\n\n"
    )


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A markdown table."""
    def cell(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write(name: str, text: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(text)
    print(f"wrote {path}")
    return path
