"""Helpers that run the real `qfleet` command (real local Ray, real environments)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


def qfleet(*args: str, timeout: float = 600, cwd: Path | None = None
           ) -> subprocess.CompletedProcess[str]:
    """Run `python -m qfleet.cli ARGS` and capture its output."""
    return subprocess.run([sys.executable, "-m", "qfleet.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT)


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("qfleet: error: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"
