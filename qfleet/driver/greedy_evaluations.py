"""Greedy evaluations beside training: the evaluator's lifecycle.

One evaluation runs at a time, on the newest published weights, never blocking training.
A lost evaluator is recreated and that evaluation skipped; an evaluation whose weights died
with their learner is skipped; one whose env raised is reported. At the end of a run, one
still running is given a short grace, then abandoned.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup

from qfleet.config import Config, ConfigError
from qfleet.driver.failures import describe_failure
from qfleet.driver.placement import LEARNER_BUNDLE, evaluator_options, in_bundle
from qfleet.driver.reporter import Reporter
from qfleet.envs import EnvSpec
from qfleet.evaluation.evaluator import Recording
from qfleet.evaluation.worker import RemoteEvaluator
from qfleet.transitions import Episode

EVAL_GRACE_S = 2.0
"""How long the end of a run waits for an evaluation still running before abandoning it."""
VIDEO_GRACE_S = 60.0
"""How long the end of a run waits for a video being filmed (a whole episode)."""


class Evaluations:
    def __init__(self, config: Config, spec: EnvSpec, reporter: Reporter, *,
                 group: PlacementGroup | None = None) -> None:
        """`group`: a sweep trial's placement group (the evaluator joins the learner's
        bundle)."""
        self.config, self.spec, self.reporter = config, spec, reporter
        self.group = group
        self._cfg = config.to_dict()
        self._node: str | None = None
        self.evaluator: Any = None
        self._eval_ref: ray.ObjectRef | None = None
        self._video_ref: ray.ObjectRef | None = None
        self.videos_off = False  # the env cannot be filmed: said once, never tried again

    def start(self, near_node: str | None) -> None:
        self._node = near_node
        self.evaluator = RemoteEvaluator.options(
            **in_bundle(evaluator_options(near_node), self.group, LEARNER_BUNDLE)
        ).remote(self._cfg, self.spec)

    @property
    def running(self) -> bool:
        return self._eval_ref is not None

    def launch(self, weights: Any, time_limit_s: float | None = None) -> None:
        c = self.config.eval
        self._eval_ref = self.evaluator.evaluate.remote(weights, c.episodes, c.epsilon,
                                                        time_limit_s)

    @property
    def pending(self) -> list[ray.ObjectRef]:
        """The evaluation and video still running."""
        return [r for r in (self._eval_ref, self._video_ref) if r is not None]

    @property
    def filming(self) -> bool:
        return self._video_ref is not None

    def launch_video(self, weights: Any) -> None:
        """Film one episode (queued behind an evaluation running on the same evaluator)."""
        self._video_ref = self.evaluator.record.remote(weights, self.config.eval.epsilon)

    def collect_video(self, timeout: float | None = 0.0) -> Recording | None:
        """The filmed episode once done; None before, or when it failed (said, never
        stopping training: a lost evaluator is `collect`'s to recreate)."""
        if self._video_ref is None or not ray.wait([self._video_ref], timeout=timeout)[0]:
            return None
        ref, self._video_ref = self._video_ref, None
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as err:
            # A task's ConfigError (the env renders no frames) stops filming for good.
            unfilmable = isinstance(err, ConfigError)
            self.videos_off |= unfilmable
            self.reporter.print(f"{'videos off' if unfilmable else 'video skipped'}: "
                                f"{describe_failure(err)}")
        return None

    def collect(self, timeout: float | None = 0.0) -> list[Episode] | None:
        """The running evaluation's episodes once it finished (None before, or when it was
        lost: a lost evaluator is recreated, an evaluation whose weights died with their
        learner is skipped, one whose env raised is reported)."""
        if self._eval_ref is None or not ray.wait([self._eval_ref], timeout=timeout)[0]:
            return None
        ref, self._eval_ref = self._eval_ref, None
        try:
            results, _ = ray.get(ref)
        except ray.exceptions.ObjectLostError:
            self.reporter.print("evaluation skipped: its weights were lost with the learner")
        except ray.exceptions.RayActorError as err:
            self.reporter.print(f"evaluator lost ({describe_failure(err)}); recreating it")
            self._replace()
        except ray.exceptions.RayTaskError as err:
            self.reporter.print(f"evaluation failed: {describe_failure(err)}")
        else:
            return [Episode(*e) for e in results]
        return None

    def final(self, network: dict[str, Any],
              give_up: Callable[[], bool]) -> list[Episode] | None:
        """Evaluate the final weights: an evaluation still running is given a short grace,
        then abandoned (its evaluator replaced); a lost evaluator is retried once. Abandoned
        too, and None, as soon as `give_up()` (a SIGTERM came: the summary must be written
        before the grace period of whoever sent it ends)."""
        if self._eval_ref is not None:
            self.collect(timeout=EVAL_GRACE_S)
        if self._eval_ref is not None or self._video_ref is not None:
            self._eval_ref = None  # the final evaluation must not queue behind either
            self._replace()
        weights = ray.put(network)
        limit = self.config.eval.final_time_s
        self.reporter.print(f"final evaluation: {self.config.eval.episodes} episodes of the "
                            f"final weights, {limit:g} s at most (eval.final_time_s)")
        for _ in range(2):
            self.launch(weights, limit)
            while self._eval_ref is not None and not give_up():
                result = self.collect(timeout=1.0)
                if result is not None:
                    return result
            if give_up():  # its evaluator goes with the fleet (if Ray is still there)
                self._eval_ref = None
                self.reporter.print("final evaluation abandoned")
                return None
        return None

    def _replace(self) -> None:
        """A fresh evaluator (for one lost, or one busy with an abandoned evaluation)."""
        self._video_ref = None
        self.shutdown()
        self.start(self._node)

    def shutdown(self) -> None:
        if self.evaluator is not None:
            with contextlib.suppress(Exception):
                ray.kill(self.evaluator, no_restart=True)
