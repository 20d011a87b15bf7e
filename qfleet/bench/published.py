"""Published benchmark results: the files under docs/benchmarks/ and the pages made from them.

Every figure qfleet publishes is one `qfleet bench --save FILE <name> …` result: the
benchmark's own JSON wrapped with where and how it was measured (command, date, machine,
qfleet version and commit). The docs' benchmark page and the README's headline table are
generated from those files, so a figure can only change by measuring it again.

    python -m qfleet.bench.published --readme README.md   # rewrite the README's table
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

import qfleet
from qfleet.runs.checkpoints import write_text_atomic

HEADLINE_BEGIN, HEADLINE_END = "<!-- headline:begin -->", "<!-- headline:end -->"
REQUIRED = ("benchmark", "command", "date", "machine", "qfleet_version", "result")


def machine() -> dict[str, Any]:
    """What a figure was measured on: enough to tell whether two figures compare."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    info: dict[str, Any] = {
        "cpus": cores or os.cpu_count(), "cpu_model": _cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(), "torch": torch.__version__,
    }
    try:
        import ray

        info["ray"] = ray.__version__
    except ImportError:
        pass
    return info


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _commit() -> str | None:
    """The source checkout's commit, if qfleet runs from one (an installed wheel has none)."""
    root = Path(qfleet.__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def envelope(benchmark: str, argv: list[str], result: dict[str, Any]) -> dict[str, Any]:
    """`result` of `qfleet bench <benchmark>` with what is needed to publish it."""
    return {
        "benchmark": benchmark,
        "command": shlex.join(["qfleet", *argv]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "qfleet_version": qfleet.__version__,
        "commit": _commit(),
        "result": result,
    }


def save(path: Path, published: dict[str, Any]) -> None:
    """Written whole or not at all: a failed write never leaves half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(published, indent=1) + "\n")


def load(directory: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every result file, by name; a file that is not a published result is an error, so
    that nothing sits in the directory unrendered."""
    found = []
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text())
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise ValueError(f"{path}: not a published benchmark result (no "
                             f"{', '.join(missing)}); make it with qfleet bench --save")
        found.append((path.stem, data))
    return found


def _module(benchmark: str) -> Any:
    return importlib.import_module(f"qfleet.bench.{benchmark}")


def _machine_line(m: dict[str, Any]) -> str:
    parts = [f"{m['cpus']} CPU cores" + (f" ({m['cpu_model']})" if m.get("cpu_model") else ""),
             f"{m['memory_gib']:g} GiB", m.get("gpu") or "no GPU",
             f"Python {m['python']}", f"torch {m['torch']}"]
    if m.get("ray"):
        parts.append(f"Ray {m['ray']}")
    return ", ".join(parts)


def page_markdown(directory: Path) -> str:
    """The benchmark page's results: one section per file, its figures as the benchmark
    itself prints them."""
    out = []
    for name, data in load(directory):
        title = (_module(data["benchmark"]).__doc__ or data["benchmark"]).strip().splitlines()[0]
        version = data["qfleet_version"] + (f" ({data['commit']})" if data.get("commit") else "")
        out += [f"### {name}", "", title, "",
                "| | |", "|---|---|",
                f"| command | `{data['command']}` |",
                f"| measured | {data['date']} |",
                f"| machine | {_machine_line(data['machine'])} |",
                f"| qfleet | {version} |", "",
                "```text", *_module(data["benchmark"]).describe(data["result"]), "```", "",
                f"Raw result: `docs/benchmarks/{name}.json`.", ""]
    return "\n".join(out) if out else "No published results yet.\n"


def headline_table(directory: Path) -> str:
    """The README's table: the figures a benchmark calls headline (`headline(result)`),
    each with its machine."""
    rows = ["| figure | value | measured on | result file |", "|---|---|---|---|"]
    for name, data in load(directory):
        headline = getattr(_module(data["benchmark"]), "headline", None)
        for figure, value in headline(data["result"]) if headline else []:
            m = data["machine"]
            where = f"{m['cpus']} cores" + (f", {m['gpu']}" if m.get("gpu") else ", no GPU")
            rows.append(f"| {figure} | {value} | {where}, {data['date'][:10]} | "
                        f"[{name}](docs/benchmarks/{name}.json) |")
    return "\n".join(rows)


def update_readme(readme: Path, directory: Path) -> bool:
    """Replace the table between the headline markers; True when the README changed."""
    text = readme.read_text()
    begin, end = text.find(HEADLINE_BEGIN), text.find(HEADLINE_END)
    if begin < 0 or end < begin:
        raise ValueError(f"{readme}: no {HEADLINE_BEGIN} … {HEADLINE_END} markers")
    new = (text[:begin + len(HEADLINE_BEGIN)] + "\n" + headline_table(directory) + "\n"
           + text[end:])
    if new != text:
        readme.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="docs/benchmarks", type=Path)
    parser.add_argument("--readme", type=Path, help="rewrite this README's headline table")
    args = parser.parse_args(argv)
    if args.readme:
        changed = update_readme(args.readme, args.dir)
        print(f"{args.readme}: {'updated' if changed else 'already up to date'}")
    else:
        sys.stdout.write(page_markdown(args.dir))


if __name__ == "__main__":
    main()
