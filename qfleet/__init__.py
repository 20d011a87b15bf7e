"""qfleet: distributed Deep Q-Network training on Ray.

    import qfleet
    summary = qfleet.train("configs/cartpole.yaml", ["stop.env_steps=20000"])
    policy = qfleet.load_policy(summary["checkpoint"])

`train`, `tune`, `evaluate`, `load_policy` and `Policy` live in `qfleet.api`; they are imported on
first use, so that importing a qfleet module (as every Ray worker does) stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Policy", "evaluate", "load_policy", "train", "tune"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from qfleet import api

        return getattr(api, name)
    raise AttributeError(f"module 'qfleet' has no attribute {name!r}")
