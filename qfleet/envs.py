"""One factory for vectorized environments, with one step contract for the actor.

ALE ids (`ALE/<Game>-v5`, `<Game>NoFrameskip-v4`) run on ale_py's C++ `AtariVectorEnv` with
the DQN preprocessing built in (84×84 grayscale, frame skip 4 with max-pooling, 4-frame
stack, no-op starts); any other env (a Gymnasium id, or a `module:attr` class or factory)
runs in a `SyncVectorEnv`. Both autoreset in the same step, and `VecEnv.step` hands the
actor the true next observation (the final one at an episode end) next to the observation
to act on, so the n-step adder never has to know which backend produced them.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from qfleet.config import EnvConfig
from qfleet.errors import EnvError

ALE_PREFIX = "ALE/"
# 108,000 frames = 30 minutes of play, the standard Atari episode cap (Machado et al. 2018).
ALE_MAX_FRAMES = 108_000
FRAME_SKIP = 4
"""Emulator frames per agent step on ALE (the DQN preprocessing)."""


@dataclass(frozen=True)
class EnvSpec:
    """What the network and the replay need to know about an environment."""

    obs_shape: tuple[int, ...]
    obs_dtype: np.dtype
    num_actions: int
    is_atari: bool


@dataclass
class Step:
    obs: np.ndarray
    """Observations to act on next (already reset where an episode ended)."""
    next_obs: np.ndarray
    """True successor observations: the final observation where an episode ended."""
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    env_ids: np.ndarray
    """Which of the vector's envs these rows are (all of them, in order, in lockstep)."""
    fresh: np.ndarray | None = None
    """Rows that are an env's first reset observation, not a step (batched ALE only)."""


ATARI_V4 = re.compile(r"^(?P<game>[A-Z][A-Za-z]*?)(?P<variant>NoFrameskip|Deterministic)?-v4$")
"""Gymnasium's older Atari ids: only `<Game>NoFrameskip-v4` is the DQN-era setup."""


def is_atari(env_id: str) -> bool:
    """An id qfleet runs on ale_py's vector env with the DQN preprocessing."""
    if env_id.startswith(ALE_PREFIX):
        return True
    match = ATARI_V4.match(env_id)
    return bool(match and match["variant"] == "NoFrameskip")


def ale_game(env_id: str) -> str:
    """`ALE/SpaceInvaders-v5`, `SpaceInvadersNoFrameskip-v4` -> `space_invaders` (the ROM
    name ale_py expects)."""
    name = env_id.removeprefix(ALE_PREFIX).split("-")[0].removesuffix("NoFrameskip")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@cache
def _register_ale() -> None:
    import ale_py

    gym.register_envs(ale_py)


def _has_rom(game: str) -> bool:
    from ale_py import roms

    with warnings.catch_warnings():  # ale_py warns of every unknown name: we say it once
        warnings.simplefilter("ignore")
        try:
            return roms.get_rom_path(game) is not None
        except Exception:  # an unknown name may raise rather than answer None
            return False


def import_env_modules(cfg: EnvConfig) -> None:
    """`env.imports`, before any env is made: in the driver and in every worker."""
    for name in cfg.imports:
        try:
            importlib.import_module(name)
        except Exception as err:
            raise EnvError(f"env.imports: cannot import {name!r}: "
                              f"{type(err).__name__}: {err}") from None


def env_module_names(cfg: EnvConfig) -> list[str]:
    """The top-level modules the env needs: `env.imports` and the module of a `module:attr`
    id."""
    names = [*cfg.imports, *([cfg.id.split(":", 1)[0]] if ":" in cfg.id else [])]
    return list(dict.fromkeys(name.split(".")[0] for name in names))


def modules_beside(cfg: EnvConfig, folders: list[Path]) -> list[Path]:
    """The env's modules that are files or packages of the user's own in `folders` (the
    config's folder, the working directory), not installed ones: the driver imports them
    from there, and Ray ships them to every worker (`runtime_env.py_modules`), whatever
    node it runs on."""
    def first(name: str) -> Path | None:  # the first folder's file or package wins
        return next((path.resolve() for folder in folders
                     for path in (folder / f"{name}.py", folder / name)
                     if path.is_file() or (path / "__init__.py").is_file()), None)

    found = (first(name) for name in env_module_names(cfg))
    return list(dict.fromkeys(path for path in found if path is not None))


def check_env_id(env_id: str) -> None:
    """Refuse unknown ids up front, naming the key (a factory is checked when made)."""
    match = ATARI_V4.match(env_id)
    if match and match["variant"] != "NoFrameskip" and _has_rom(ale_game(match["game"])):
        raise EnvError(
            f"env.id: {env_id!r} is a Gymnasium v4 Atari id without the DQN preprocessing "
            f"(frame skip of its own); use 'ALE/{match['game']}-v5' (sticky actions, "
            f"Machado et al. 2018) or '{match['game']}NoFrameskip-v4' (the DQN-era setup)")
    if is_atari(env_id):
        _register_ale()
        if not _has_rom(ale_game(env_id)) or (env_id.startswith(ALE_PREFIX)
                                               and env_id not in gym.envs.registry):
            raise EnvError(f"env.id: unknown Atari environment {env_id!r}")
        return
    if ":" not in env_id and env_id not in gym.envs.registry:
        raise EnvError(f"env.id: unknown Gymnasium environment {env_id!r}")


def env_factory(cfg: EnvConfig) -> Callable[[], gym.Env]:
    """How to make one env of `cfg.id` (not Atari) with `cfg.kwargs`: `gym.make` of a
    registered id, or the `module:attr` class or factory."""
    import_env_modules(cfg)
    check_env_id(cfg.id)
    kwargs = dict(cfg.kwargs)
    steps = cfg.max_episode_steps
    name = cfg.id
    if ":" in cfg.id:
        module_name, attr = cfg.id.split(":", 1)
        try:
            module = importlib.import_module(module_name)
        except Exception as err:
            raise EnvError(f"env.id: cannot import module {module_name!r} of {cfg.id!r}: "
                              f"{type(err).__name__}: {err}") from None
        target = getattr(module, attr, None)
        if callable(target):
            def make() -> gym.Env:
                env = target(**kwargs)
                return gym.wrappers.TimeLimit(env, steps) if steps is not None else env

            return make
        if attr not in gym.envs.registry:
            raise EnvError(f"env.id: module {module_name!r} has no attribute {attr!r} and "
                              f"registers no Gymnasium id {attr!r}")
        name = attr
    if steps is not None:
        kwargs["max_episode_steps"] = steps
    return lambda: gym.make(name, **kwargs)


def env_spec(cfg: EnvConfig) -> EnvSpec:
    """Shapes and action count, from the action/observation spaces of one env."""
    if is_atari(cfg.id):
        import_env_modules(cfg)
        check_env_id(cfg.id)
        env = make_vec_env(cfg, num_envs=1, seed=cfg.seed)
        n = int(env.num_actions)
        env.close()
        return EnvSpec((cfg.frame_stack, 84, 84), np.dtype(np.uint8), n, True)
    make = env_factory(cfg)  # imports env.imports and checks the id, as in every worker
    try:
        env = make()
    except Exception as err:  # missing optional dependency, bad kwargs, ...
        raise EnvError(f"env.id: cannot make {cfg.id!r}: {type(err).__name__}: "
                          f"{err}") from None
    try:
        if not isinstance(env, gym.Env):
            raise EnvError(f"env.id: {cfg.id!r} made a {type(env).__name__}, not a "
                              "gymnasium.Env")
        space, action_space = env.observation_space, env.action_space
    finally:
        with contextlib.suppress(Exception):
            env.close()
    if not isinstance(action_space, gym.spaces.Discrete):
        raise EnvError(f"env.id: {cfg.id!r} has a {type(action_space).__name__} action "
                          "space; DQN needs Discrete actions")
    if not isinstance(space, gym.spaces.Box):
        raise EnvError(f"env.id: {cfg.id!r} has a {type(space).__name__} observation "
                          "space; qfleet supports Box observations")
    dtype = np.dtype(np.uint8) if space.dtype == np.uint8 else np.dtype(np.float32)
    return EnvSpec(tuple(space.shape), dtype, int(action_space.n), False)


def clip_rewards_default(cfg: EnvConfig) -> bool:
    return is_atari(cfg.id) if cfg.clip_rewards is None else cfg.clip_rewards


class VecEnv:
    """A vector of envs that autoresets in the same step, with `Step` as its contract.

    In lockstep every `recv` returns all envs. A batched ALE vector (`batch_size` below
    `num_envs`) returns whichever `batch_size` envs finished first, so an actor can pick
    actions for one batch while the emulator threads step the others.
    """

    def __init__(self, env: gym.vector.VectorEnv, obs_dtype: np.dtype) -> None:
        self._env = env
        self.num_envs = env.num_envs
        self.num_actions = int(env.single_action_space.n)
        self.batch_size = int(getattr(env, "batch_size", 0) or env.num_envs)
        self._dtype = obs_dtype
        # ALE's vector env steps in C++ threads between send() and recv(), without the GIL.
        self._async = hasattr(env, "send") and hasattr(env, "recv")
        self._actions: np.ndarray | None = None
        self._all = np.arange(self.num_envs)
        self._fresh = np.ones(self.num_envs, dtype=bool)  # reset obs not yet returned

    def send(self, actions: np.ndarray) -> None:
        """Actions for the envs of the last `start`/`recv`, in the same order."""
        if self._async:
            self._env.send(actions)
        else:
            self._actions = actions

    def recv(self) -> Step:
        if self._async:
            return self._to_step(*self._env.recv())
        assert self._actions is not None, "recv() without send()"
        actions, self._actions = self._actions, None
        return self.step(actions)

    def start(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Reset every env; return the ids and observations of the first batch (the rest
        arrive from `recv` as `fresh` rows)."""
        obs, info = self._env.reset(seed=seed)
        ids = np.asarray(info.get("env_id", self._all), dtype=np.int64)
        self._fresh[:] = True
        self._fresh[ids] = False
        return ids, np.asarray(obs, dtype=self._dtype)

    def reset(self, seed: int) -> np.ndarray:
        """Reset a lockstep vector: observations of all envs, in order."""
        ids, obs = self.start(seed)
        assert len(ids) == self.num_envs, "reset() of a batched vector; use start()"
        return obs

    def step(self, actions: np.ndarray) -> Step:
        return self._to_step(*self._env.step(actions))

    def _to_step(self, obs: np.ndarray, rewards: np.ndarray, terminated: np.ndarray,
                 truncated: np.ndarray, info: dict) -> Step:
        obs = np.asarray(obs, dtype=self._dtype)
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        ids = self._all
        fresh = None
        if self.batch_size < self.num_envs:
            ids = np.asarray(info["env_id"], dtype=np.int64)
            if self._fresh[ids].any():
                fresh = self._fresh[ids].copy()
                self._fresh[ids] = False
        done = terminated | truncated
        next_obs = obs
        if done.any():
            next_obs = obs.copy()
            final = info["final_obs"]
            for i in np.flatnonzero(done):
                next_obs[i] = final[i]
        return Step(obs, next_obs, np.asarray(rewards, dtype=np.float32), terminated,
                    truncated, ids, fresh)

    def close(self) -> None:
        self._env.close()


def _atari_vector(cfg: EnvConfig, num_envs: int, **options: Any) -> gym.vector.VectorEnv:
    """ale_py's vector env of `cfg`: the emulator settings, with `options` for the
    observation (size, colour, stack) and the threads."""
    from ale_py.vector_env import AtariVectorEnv

    sticky = cfg.sticky_actions
    if sticky is None:
        sticky = 0.25 if cfg.id.endswith("-v5") else 0.0
    steps = cfg.max_episode_steps
    return AtariVectorEnv(
        ale_game(cfg.id),
        num_envs,
        repeat_action_probability=sticky,
        max_num_frames_per_episode=ALE_MAX_FRAMES if steps is None else steps * FRAME_SKIP,
        frameskip=FRAME_SKIP,
        noop_max=cfg.noop_max,
        episodic_life=cfg.episodic_life,
        reward_clipping=False,  # returns are reported raw; the actor clips for the loss
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        **options,
    )


def atari_camera(cfg: EnvConfig) -> gym.vector.VectorEnv:
    """One env of `cfg` showing the full-resolution RGB screen (210×160). Seeded and stepped
    like `make_vec_env(cfg, 1, seed)` it plays the same episode, emulator for emulator: the
    video of what the agent saw at 84×84."""
    return _atari_vector(cfg, 1, num_threads=1, img_height=210, img_width=160,
                         grayscale=False, stack_num=1)


def make_vec_env(cfg: EnvConfig, num_envs: int, seed: int, num_threads: int = 0,
                 batch_size: int = 0) -> VecEnv:
    """Build `num_envs` copies of `cfg.id` for one actor (or the evaluator). `batch_size`
    (ALE only) below `num_envs` makes the vector batched, see `VecEnv`."""
    if is_atari(cfg.id):
        import_env_modules(cfg)
        env = _atari_vector(cfg, num_envs,
                            batch_size=batch_size if 0 < batch_size < num_envs else 0,
                            num_threads=num_threads or cfg.env_threads or min(num_envs, 2),
                            stack_num=cfg.frame_stack)
        return VecEnv(env, np.dtype(np.uint8))
    make = env_factory(cfg)
    env = gym.vector.SyncVectorEnv(
        [make for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    space = env.single_observation_space
    dtype = np.dtype(np.uint8) if space.dtype == np.uint8 else np.dtype(np.float32)
    return VecEnv(env, dtype)
