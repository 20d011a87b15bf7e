"""What the learner and the actors both ask of torch's devices."""

from __future__ import annotations

import warnings

import torch


def cuda_missing_reason() -> str:
    """Why torch sees no GPU, in one clause: a CPU build, or torch's own warning (a driver
    too old for its CUDA, none at all)."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.is_available()
    said = next((str(w.message).strip().splitlines()[0] for w in caught), "")
    return (f"torch {torch.__version__} for CUDA {torch.version.cuda}"
            + (f": {said}" if said else "; no NVIDIA device or driver found"))
