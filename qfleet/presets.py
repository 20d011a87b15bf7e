"""The shipped configs (`qfleet/configs/`, linked as `configs/` in a source checkout).

They travel inside the package, so `qfleet train configs/cartpole.yaml` and the benchmarks'
default configs work the same from a checkout, an installed wheel or the image.
"""

from __future__ import annotations

from pathlib import Path

PRESETS = Path(__file__).resolve().parent / "configs"


def preset(name: str) -> Path:
    """The shipped config `name` (`cartpole.yaml`, `sweeps/cartpole-pbt.yaml`)."""
    return PRESETS / name


def resolve(path: str | Path) -> Path:
    """`path` as given when it exists; otherwise, for `configs/NAME.yaml` (as the docs write
    it) or a bare `NAME`, the shipped config of that name, if there is one."""
    p = Path(path)
    if p.exists():
        return p
    rel = p.relative_to("configs") if p.parts[:1] == ("configs",) else p
    for candidate in (PRESETS / rel, PRESETS / rel.with_suffix(".yaml")):
        if not p.is_absolute() and candidate.is_file():
            return candidate
    return p


def names() -> list[str]:
    return sorted(p.relative_to(PRESETS).as_posix() for p in PRESETS.rglob("*.yaml"))
