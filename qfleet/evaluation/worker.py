"""The evaluator's Ray edge: greedy evaluations and videos beside training, on a process
of their own so that training never waits for them."""

from __future__ import annotations

import time
from typing import Any

import ray
import torch

from qfleet.config import config_from_dict
from qfleet.envs import EnvSpec
from qfleet.evaluation.evaluator import Evaluator, Recording


class EvaluatorWorker:
    def __init__(self, config: dict[str, Any], spec: EnvSpec) -> None:
        self.evaluator = Evaluator(config_from_dict(config), spec)

    def evaluate(self, state: dict[str, torch.Tensor], episodes: int, epsilon: float,
                 time_limit_s: float | None = None
                 ) -> tuple[list[tuple[float, int, bool, bool]], float]:
        start = time.perf_counter()
        result = self.evaluator.evaluate(state, episodes, epsilon, time_limit_s)
        return [tuple(e) for e in result], time.perf_counter() - start

    def record(self, state: dict[str, torch.Tensor], epsilon: float) -> Recording:
        return self.evaluator.record(state, epsilon)


RemoteEvaluator = ray.remote(EvaluatorWorker)
