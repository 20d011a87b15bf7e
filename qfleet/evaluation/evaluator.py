"""Greedy evaluation under a named protocol: whole episodes with near-greedy actions, their
returns, lengths and human-normalized score, and videos of them.

Used by the driver's periodic evaluation (as a Ray actor, so training never waits for it)
and by `qfleet evaluate` in-process, with the same defaults. On Atari the protocol fixes
the emulator settings, whatever the training env used: `sticky` (Machado et al. 2018) or
`noop30` (the DQN-era tables); both act ε-greedily with ε = 0.001 and cap episodes at
108,000 frames, so a score can be set beside a paper's. Each of the N episodes runs in its
own env of one vector, so one forward pass serves them all.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from qfleet.actors.epsilon import explore
from qfleet.atari_scores import human_normalized
from qfleet.config import Config, ConfigError, EnvConfig
from qfleet.envs import (
    FRAME_SKIP,
    EnvSpec,
    ale_game,
    atari_camera,
    env_factory,
    is_atari,
    make_vec_env,
)
from qfleet.networks import build_q_network, resample_noise, set_noise
from qfleet.transitions import Episode
from qfleet.video import GIF_MAX_FRAMES, Mp4Writer, gif

PROTOCOLS = {"sticky": {"sticky_actions": 0.25, "noop_max": 0},
             "noop30": {"sticky_actions": 0.0, "noop_max": 30}}
"""The emulator settings of each Atari evaluation protocol."""


def evaluation_env(config: Config) -> EnvConfig:
    """The env evaluations run: on Atari, the training env under the protocol (no life-loss
    episodes, the protocol's episode cap); any other env as it trains."""
    env = config.env
    if not is_atari(env.id):
        return env
    return env.model_copy(update={**PROTOCOLS[config.eval.protocol], "episodic_life": False,
                                  "max_episode_steps": config.eval.max_episode_steps})


def protocol_name(config: Config) -> str | None:
    """The protocol a score was measured under (None: not an Atari env)."""
    return config.eval.protocol if is_atari(config.env.id) else None


def training_protocol(config: Config) -> str | None:
    """The emulator settings an Atari agent trained under, by name where they are one:
    `atari100k` (Kaiser et al. 2020: no sticky actions, up to 30 no-ops, a life loss ends
    a training episode, 27,000-step episodes), `sticky` (Machado et al. 2018), `noop30`;
    else the settings spelled out. None off Atari."""
    env = config.env
    if not is_atari(env.id):
        return None
    sticky = env.sticky_actions
    if sticky is None:
        sticky = 0.25 if env.id.endswith("-v5") else 0.0
    if (sticky == 0.0 and env.noop_max == 30 and env.episodic_life
            and env.max_episode_steps == 27_000):
        return "atari100k"
    if not env.episodic_life:
        for name, settings in PROTOCOLS.items():
            if (sticky, env.noop_max) == (settings["sticky_actions"], settings["noop_max"]):
                return name
    return (f"sticky_actions={sticky:g}, noop_max={env.noop_max}, "
            f"life_loss_ends_episode={env.episodic_life}, "
            f"max_episode_steps={env.max_episode_steps}")


@dataclass(frozen=True)
class Scores:
    """One evaluation, with what it was measured under: the protocol (None off Atari) and
    ε, the return's mean, standard deviation and standard error (None for one episode), the
    human-normalized mean (Atari-57 games, else None), and each episode."""

    env_id: str
    protocol: str | None
    epsilon: float
    episodes: tuple[Episode, ...]
    return_mean: float
    return_std: float | None
    return_sem: float | None
    human_normalized_score_mean: float | None
    frames_per_step: int
    """Emulator frames per agent step (4 on Atari); no-op start frames are not counted."""

    @classmethod
    def of(cls, config: Config, episodes: list[Episode], epsilon: float) -> Scores:
        returns = [e.ret for e in episodes]
        mean = statistics.fmean(returns)
        std = statistics.stdev(returns) if len(returns) > 1 else None
        env_id = config.env.id
        atari = is_atari(env_id)
        return cls(env_id, protocol_name(config), epsilon, tuple(episodes), mean, std,
                   None if std is None else std / math.sqrt(len(returns)),
                   human_normalized(ale_game(env_id), mean) if atari else None,
                   FRAME_SKIP if atari else 1)

    def frames(self, episode: Episode) -> int:
        return episode.length * self.frames_per_step

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (`qfleet evaluate --json`)."""
        return {"env_id": self.env_id, "protocol": self.protocol, "epsilon": self.epsilon,
                "return_mean": self.return_mean, "return_std": self.return_std,
                "return_sem": self.return_sem,
                "human_normalized_score_mean": self.human_normalized_score_mean,
                "episodes": [{"ret": e.ret, "length": e.length, "frames": self.frames(e),
                              "terminated": e.terminated} for e in self.episodes]}


class Recording(NamedTuple):
    episode: Episode
    mp4: bytes
    gif: bytes
    """The episode's first frames for TensorBoard (`video.GIF_MAX_FRAMES`)."""
    complete: bool
    """False when the video stopped early (the camera left the agent's episode)."""


class Evaluator:
    def __init__(self, config: Config, spec: EnvSpec, seed: int = 1_000_003) -> None:
        torch.set_num_threads(1)
        self.config, self.spec = config, spec
        self.env = evaluation_env(config)
        self.max_steps = config.eval.max_episode_steps
        self.net = build_q_network(config, spec).eval().requires_grad_(False)
        set_noise(self.net, config.eval.noisy)
        self._seed = seed
        self._rng = np.random.default_rng(seed)

    def _act(self, obs: np.ndarray, epsilon: float) -> np.ndarray:
        with torch.inference_mode():
            if self.net.noisy and self.config.eval.noisy:  # Rainbow's: ε on top of noise
                resample_noise(self.net)
            greedy = self.net(torch.from_numpy(obs)).argmax(dim=1).numpy()
        return explore(greedy, epsilon, self.spec.num_actions, self._rng)

    def _next_seed(self, episodes: int) -> int:
        seed, self._seed = self._seed, self._seed + episodes
        return seed

    def evaluate(self, state: dict[str, torch.Tensor], episodes: int,
                 epsilon: float, time_limit_s: float | None = None) -> list[Episode]:
        """One episode in each of `episodes` envs; fresh seeds on every call. Past
        `time_limit_s`, the episodes still running are returned cut short (`cut`)."""
        self.net.load_state_dict(state)
        seed = self._next_seed(episodes)
        envs = make_vec_env(self.env, episodes, seed)
        obs = envs.reset(seed=seed)
        returns = np.zeros(episodes)
        lengths = np.zeros(episodes, dtype=np.int64)
        finished: list[Episode | None] = [None] * episodes
        deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
        try:
            while any(f is None for f in finished):
                if deadline is not None and time.monotonic() >= deadline:
                    finished = [f or Episode(float(returns[e]), int(lengths[e]), False, True)
                                for e, f in enumerate(finished)]
                    break
                step = envs.step(self._act(obs, epsilon))
                returns += step.rewards
                lengths += 1
                capped = lengths >= self.max_steps
                for e in np.flatnonzero(step.terminated | step.truncated | capped):
                    if finished[e] is None:
                        finished[e] = Episode(float(returns[e]), int(lengths[e]),
                                              bool(step.terminated[e]))
                obs = step.obs
        finally:
            envs.close()
        return [f for f in finished if f is not None]

    def record(self, state: dict[str, torch.Tensor], epsilon: float) -> Recording:
        """One episode as `evaluate` plays it, filmed: an mp4 of the whole episode from the
        full-resolution RGB screen (not the network's input) and a GIF of its start."""
        self.net.load_state_dict(state)
        frames = self._atari_episode if self.spec.is_atari else self._rendered_episode
        fps, film = frames(self._next_seed(1), epsilon)
        writer = Mp4Writer(fps)
        start: list[np.ndarray] = []
        outcome: Episode | None = None
        complete = True
        try:
            for item in film:
                if isinstance(item, Episode):
                    outcome = item
                elif item is None:
                    complete = False
                else:
                    writer.add(item)
                    if len(start) < GIF_MAX_FRAMES:
                        start.append(item)
            mp4 = writer.finish()
        finally:
            film.close()  # the envs, also when encoding failed
            writer.close()
        assert outcome is not None
        return Recording(outcome, mp4, gif(start, fps), complete)

    def _atari_episode(self, seed: int, epsilon: float
                       ) -> tuple[int, Iterator[np.ndarray | Episode | None]]:
        """The agent's env and a full-resolution twin, seeded alike and given the same
        actions: the twin's frames are the agent's episode. Yields frames, then None if the
        twin ever disagrees (a reward or an episode end), then the Episode."""
        def film() -> Iterator[np.ndarray | Episode | None]:
            agent, camera = make_vec_env(self.env, 1, seed), atari_camera(self.env)
            try:
                obs = agent.reset(seed=seed)
                view, _ = camera.reset(seed=seed)
                frame, ret, length, synced = view[0, 0], 0.0, 0, True
                while True:
                    if synced:
                        yield frame
                    actions = self._act(obs, epsilon)
                    step = agent.step(actions)
                    view, reward, terminated, truncated, info = camera.step(actions)
                    ret += float(step.rewards[0])
                    length += 1
                    done = bool(step.terminated[0] or step.truncated[0])
                    if synced and (reward[0] != step.rewards[0]
                                   or done != bool(terminated[0] or truncated[0])):
                        synced = False
                        yield None
                    if done or length >= self.max_steps:
                        if synced:
                            yield info["final_obs"][0, 0] if done else view[0, 0]
                        yield Episode(ret, length, bool(step.terminated[0]))
                        return
                    obs, frame = step.obs, view[0, 0]
            finally:
                agent.close()
                camera.close()

        return 60 // FRAME_SKIP, film()

    def _rendered_episode(self, seed: int, epsilon: float
                          ) -> tuple[int, Iterator[np.ndarray | Episode | None]]:
        """A Gymnasium env made with `render_mode="rgb_array"`: its rendered frames."""
        # Frames into an array need no display: without this, SDL (pygame) prints an
        # error line about the missing one on every headless machine.
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        env_cfg = self.env.model_copy(update={"kwargs": {**self.env.kwargs,
                                                         "render_mode": "rgb_array"}})
        try:
            env = env_factory(env_cfg)()
        except TypeError as err:
            raise ConfigError(f"env.id: {self.env.id!r} cannot render RGB frames for a "
                              f"video: {err}") from None

        def film() -> Iterator[np.ndarray | Episode | None]:
            try:
                obs, _ = env.reset(seed=seed)
                ret, length = 0.0, 0
                while True:
                    yield self._frame(env.render())
                    action = self._act(np.asarray(obs, dtype=self.spec.obs_dtype)[None],
                                       epsilon)
                    obs, reward, terminated, truncated, _ = env.step(int(action[0]))
                    ret += float(reward)
                    length += 1
                    if terminated or truncated or length >= self.max_steps:
                        yield self._frame(env.render())
                        yield Episode(ret, length, bool(terminated))
                        return
            finally:
                env.close()

        try:
            fps = int(env.metadata.get("render_fps") or 30)
        except Exception:
            env.close()
            raise
        return fps, film()

    def _frame(self, frame: Any) -> np.ndarray:
        array = np.asarray(frame) if frame is not None else None
        if array is None or array.ndim != 3 or array.shape[2] != 3:
            raise ConfigError(f"env.id: {self.env.id!r} renders no RGB frames "
                              "(render_mode='rgb_array') for a video")
        return array.astype(np.uint8, copy=False)

