"""Sweep files: dotted config keys mapped to search spaces, checked against the config
schema before anything starts, and turned into Ray Tune's spaces.

```yaml
learner.lr: {loguniform: [3.0e-4, 3.0e-3]}
learner.target_update_every: {choice: [25, 50, 100]}
learner.n_step: {randint: [3, 8]}        # both ends included
stop.time_s: 120                         # a plain value: the same for every trial
```
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qfleet.config import Config, ConfigError, config_from_dict, read_yaml, set_key
from qfleet.presets import resolve

KINDS = ("choice", "uniform", "loguniform", "randint")
FIXED = "fixed"

MUTABLE = ("learner.lr", "learner.adam_eps", "learner.replay_ratio",
           "learner.target_update_every", "learner.tau", "actors.apex_epsilon",
           "actors.apex_alpha", "actors.epsilon_start", "actors.epsilon_end",
           "actors.epsilon_decay_steps")
"""What Population Based Training may change mid-run: a trial that continues another's
checkpoint keeps its network, n-step returns and replay layout, so only the optimizer's
step size, exploration, the replay ratio and the target period may differ."""

PLACEMENT = ("actors.num_actors", "actors.num_cpus", "actors.resources", "learner.device",
             "learner.num_gpus", "learner.resources")
"""Keys that shape a trial's placement group, which is the same for every trial: a sweep
may fix them, not search them."""

CORNER_COMBINATIONS = 256
"""Up to this many combinations of every space's ends (and choices) are each validated as
a whole config (cross-key checks such as replay.min_size <= replay.capacity); beyond it,
each space's ends one at a time."""


@dataclass(frozen=True)
class Space:
    """One key's search space: `choice` options, a `uniform`, `loguniform` or `randint`
    range (both ends included), or a `fixed` value."""

    key: str
    kind: str
    values: tuple[Any, ...]

    def domain(self) -> Any:
        """The space as Ray Tune samples it (a fixed value as itself)."""
        from ray import tune

        if self.kind == FIXED:
            return self.values[0]
        if self.kind == "choice":
            return tune.choice(list(self.values))
        low, high = self.values
        if self.kind == "uniform":
            return tune.uniform(low, high)
        if self.kind == "loguniform":
            return tune.loguniform(low, high)
        return tune.randint(low, high + 1)  # Tune's upper end is excluded; ours is not

    def clamp(self, value: Any) -> Any:
        """A value perturbed by PBT (×0.8, ×1.2), put back inside the range."""
        if self.kind in (FIXED, "choice"):
            return value
        low, high = self.values
        value = min(max(value, low), high)
        return round(value) if self.kind == "randint" else value


@dataclass(frozen=True)
class Sweep:
    source: str
    spaces: tuple[Space, ...]

    @property
    def searched(self) -> tuple[Space, ...]:
        return tuple(s for s in self.spaces if s.kind != FIXED)

    def param_space(self) -> dict[str, Any]:
        """Ray Tune's `param_space`: the dotted keys, flat."""
        return {s.key: s.domain() for s in self.spaces}

    def fixed(self) -> dict[str, Any]:
        """The plain values: settings of every trial, part of the config they start from."""
        return {s.key: s.values[0] for s in self.spaces if s.kind == FIXED}

    def mutations(self) -> dict[str, Any]:
        """PBT's `hyperparam_mutations`: the searched keys (all of them `MUTABLE`); a
        choice as a list, which PBT shifts to a neighbouring option (a domain it would
        multiply by 0.8 or 1.2, off the list)."""
        return {s.key: list(s.values) if s.kind == "choice" else s.domain()
                for s in self.searched}

    def clamp(self, params: dict[str, Any]) -> dict[str, Any]:
        """PBT's explore step kept inside the sweep's ranges."""
        by_key = {s.key: s for s in self.spaces}
        return {k: by_key[k].clamp(v) if k in by_key else v for k, v in params.items()}

    def to_dict(self) -> dict[str, Any]:
        """As the sweep file says it (for `sweep.json`, and to compare on `--resume`)."""
        return {s.key: s.values[0] if s.kind == FIXED else {s.kind: list(s.values)}
                for s in self.spaces}


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> Config:
    """A trial's config: the base config's raw data with the sampled values set."""
    data = copy.deepcopy(base)
    for key, value in params.items():
        set_key(data, key, value)
    return config_from_dict(data)


def load_sweep(path: str | Path, base: Config, scheduler: str,
               check: Callable[[Config], None] | None = None) -> Sweep:
    """Read and check a sweep file against `base` (the resolved config the trials start
    from) and the scheduler; every problem is one `ConfigError` line. `check`: what else
    each corner config must pass (its network for the env, its replay in memory)."""
    name = Path(path).name
    loaded = read_yaml(resolve(path), "sweep", name)
    if not isinstance(loaded, dict) or not loaded:
        raise ConfigError(f"sweep {name}: expected a mapping of dotted config keys to search "
                          "spaces, such as learner.lr: {loguniform: [1.0e-4, 1.0e-3]}")
    spaces = tuple(_space(name, str(key), value) for key, value in loaded.items())
    sweep = Sweep(str(path), spaces)
    if not sweep.searched:
        raise ConfigError(f"sweep {name}: no search space, only fixed values (give at least "
                          f"one key a space: {{{', '.join(KINDS)}: ...}})")
    for space in sweep.searched:
        if space.key in PLACEMENT:
            raise ConfigError(f"sweep {name}: {space.key} shapes every trial's placement "
                              "group, the same for all trials: give it a plain value (or "
                              "an override), not a search space")
    if scheduler == "pbt":
        for space in sweep.searched:
            if space.key not in MUTABLE:
                raise ConfigError(
                    f"sweep {name}: {space.key} cannot change mid-run, and PBT continues "
                    "each trial from another's checkpoint (same network, n-step returns and "
                    f"replay); it perturbs only {', '.join(MUTABLE)}. Sweep {space.key} "
                    "with --scheduler asha or fifo, or fix it")
    _check_corners(name, base, sweep, check)
    _check_ranges_on_whole_numbers(name, base, sweep)
    return sweep


def _space(name: str, key: str, value: Any) -> Space:
    where = f"sweep {name}: {key}"
    if not isinstance(value, dict):
        if isinstance(value, list):
            raise ConfigError(f"{where}: a list is ambiguous; write {{choice: {value}}} for "
                              "a search over those values")
        return Space(key, FIXED, (value,))
    if len(value) != 1 or next(iter(value)) not in KINDS:
        raise ConfigError(f"{where}: expected one of {', '.join(KINDS)} (got {value!r})")
    kind, args = next(iter(value.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where}: choice needs a non-empty list of values "
                              f"(got {args!r})")
        return Space(key, kind, tuple(args))
    numbers = (isinstance(args, list) and len(args) == 2
               and all(isinstance(a, int | float) and not isinstance(a, bool)
                       and math.isfinite(a) for a in args))
    if not numbers:
        raise ConfigError(f"{where}: {kind} needs [low, high], two numbers (got {args!r})")
    low, high = args
    if not low < high:
        raise ConfigError(f"{where}: {kind} needs low < high (got {args!r})")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs 0 < low (got {args!r})")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"{where}: randint needs two integers (got {args!r})")
    return Space(key, kind, (low, high))


def _check_corners(name: str, base: Config, sweep: Sweep,
                   check: Callable[[Config], None] | None) -> None:
    """Validate the configs at the spaces' corners (a range's ends, every choice): a key
    the schema does not have, a value it refuses, a combination it refuses, or a fleet a
    sweep cannot place."""
    data = base.to_dict()
    corners = [[(s.key, v) for v in s.values] for s in sweep.spaces]
    if math.prod(len(c) for c in corners) <= CORNER_COMBINATIONS:
        combos: Any = itertools.product(*corners)
    else:
        first = [c[0] for c in corners]
        combos = ([*first[:i], pair, *first[i + 1:]]
                  for i, c in enumerate(corners) for pair in c)
    for combo in combos:
        try:
            config = trial_config(data, dict(combo))
            if check is not None:
                check(config)
        except ValueError as err:  # ConfigError, or the learner's LearnerError
            raise ConfigError(f"sweep {name}: {err}") from None
        if config.actors.num_actors == "auto":
            raise ConfigError(
                "actors.num_actors=auto: a sweep trial is a fixed placement group (a bundle "
                "for the learner and one per actor, so that trials never take each other's "
                "CPUs); give a number of actors")


def _check_ranges_on_whole_numbers(name: str, base: Config, sweep: Sweep) -> None:
    """A uniform or loguniform range samples fractions, which an integer key refuses in
    every trial though both ends pass."""
    data = base.to_dict()
    for space in sweep.searched:
        if space.kind not in ("uniform", "loguniform"):
            continue
        low, high = space.values
        try:
            trial_config(data, {space.key: low + (high - low) / math.pi})
        except ConfigError:
            raise ConfigError(f"sweep {name}: {space.key} takes whole numbers; sample it "
                              f"with {{randint: [{math.ceil(low)}, {math.floor(high)}]}} "
                              "or a choice") from None
