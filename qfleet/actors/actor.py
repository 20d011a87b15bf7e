"""The Actor: vectors of envs, a CPU copy of the Q-network, ε-greedy, the n-step adder.

Plain Python, no Ray: `collect()` steps the envs and returns a `Chunk`; the Ray wrapper
(`qfleet.remote`) decides when to send it and when to swap in new weights.

The envs are split into groups that take turns (EnvPool-style): while the emulator
threads step one group, the Q-network chooses the next actions of another, so inference
overlaps emulation instead of adding to it.
"""

from __future__ import annotations

import numpy as np
import torch

from qfleet.actors.epsilon import fleet_epsilons
from qfleet.actors.frames import FrameStreams
from qfleet.actors.nstep import NStepAdder
from qfleet.config import Config
from qfleet.envs import EnvSpec, Step, VecEnv, clip_rewards_default, make_vec_env
from qfleet.networks import build_q_network
from qfleet.transitions import Chunk, Episode, Transitions, uses_frame_refs


class _Group:
    """A slice of the actor's envs with its own adder and frame streams."""

    def __init__(self, config: Config, spec: EnvSpec, first_env: int, envs: VecEnv,
                 seed: int, frame_refs: bool) -> None:
        self.envs, self.first = envs, first_env
        n = envs.num_envs
        self.obs = envs.reset(seed=seed)
        self.streams: FrameStreams | None = None
        self.refs: np.ndarray | None = None
        if frame_refs:
            self.streams = FrameStreams(first_env, n, spec.obs_shape[0])
            self.refs = self.streams.reset(self.obs)
            ref_shape, ref_dtype = (3,), np.dtype(np.int64)
        else:
            ref_shape, ref_dtype = spec.obs_shape, spec.obs_dtype
        # The adder carries observations, or frame references, without looking inside.
        self.adder = NStepAdder(n, config.learner.n_step, config.learner.gamma, ref_shape,
                                ref_dtype)
        self.ep_return = np.zeros(n, dtype=np.float64)
        self.ep_length = np.zeros(n, dtype=np.int64)
        self.actions = np.zeros(n, dtype=np.int64)


class Actor:
    def __init__(self, config: Config, spec: EnvSpec, actor_index: int, seed: int) -> None:
        torch.set_num_threads(1)  # one core per actor; intra-op threads only contend
        self.config, self.index = config, actor_index
        a = config.actors
        e = a.envs_per_actor
        groups = a.env_groups or (2 if spec.is_atari and e >= 2 else 1)
        groups = max(1, min(groups, e))
        threads = max(1, (config.env.env_threads or 2) // groups)
        sizes = [e // groups + (1 if g < e % groups else 0) for g in range(groups)]
        frame_refs = uses_frame_refs(config, spec)
        self.groups: list[_Group] = []
        first = actor_index * e
        for g, size in enumerate(sizes):
            envs = make_vec_env(config.env, size, seed + 7 * g, num_threads=threads)
            self.groups.append(_Group(config, spec, first, envs, seed + 7 * g, frame_refs))
            first += size
        self.num_envs = e
        self.num_actions = self.groups[0].envs.num_actions
        self.net = build_q_network(config.network, spec).eval()
        self.net.requires_grad_(False)
        self.version = 0
        self.epsilons = fleet_epsilons(a, actor_index)
        self.clip = clip_rewards_default(config.env)
        self.rng = np.random.default_rng(seed)

    def set_weights(self, version: int, state: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict(state)
        self.version = version

    def set_fleet_step(self, fleet_step: int) -> None:
        """Linear ε decays with the fleet's env steps, which the learner reports."""
        if self.config.actors.epsilon == "linear":
            self.epsilons = fleet_epsilons(self.config.actors, self.index, fleet_step)

    def select_action(self, obs: np.ndarray, epsilons: np.ndarray | None = None) -> np.ndarray:
        """ε-greedy over the batch; the network runs only for the envs acting greedily."""
        eps = self.epsilons if epsilons is None else epsilons
        n = len(obs)
        explore = self.rng.random(n) < eps
        actions = self.rng.integers(0, self.num_actions, size=n)
        greedy = np.flatnonzero(~explore)
        if greedy.size:
            x = torch.from_numpy(obs if greedy.size == n else obs[greedy])
            with torch.inference_mode():
                actions[greedy] = self.net(x).argmax(dim=1).numpy()
        return actions

    def _send(self, g: _Group) -> None:
        eps = self.epsilons[g.first - self.index * self.num_envs:][:g.envs.num_envs]
        g.actions = self.select_action(g.obs, eps)
        g.envs.send(g.actions)

    def _record(self, g: _Group, step: Step, parts: list[Transitions],
                episodes: list[Episode]) -> None:
        rewards = np.clip(step.rewards, -1.0, 1.0) if self.clip else step.rewards
        done = step.terminated | step.truncated
        if g.streams is not None:
            next_refs, refs = g.streams.step(step.obs, step.next_obs, done)
            out = g.adder.add(g.refs, g.actions, rewards, step.terminated, step.truncated,
                              next_refs)
            g.refs = refs
        else:
            out = g.adder.add(g.obs, g.actions, rewards, step.terminated, step.truncated,
                              step.next_obs)
        if out is not None:
            parts.append(out)
        g.ep_return += step.rewards
        g.ep_length += 1
        for e in np.flatnonzero(done):
            episodes.append(Episode(float(g.ep_return[e]), int(g.ep_length[e]),
                                    bool(step.terminated[e])))
            g.ep_return[e] = 0.0
            g.ep_length[e] = 0
        g.obs = step.obs

    def collect(self, steps: int) -> Chunk:
        """Step every env `steps` times; return the completed transitions and episodes."""
        parts: list[Transitions] = []
        episodes: list[Episode] = []
        groups = self.groups
        if len(groups) == 1:
            g = groups[0]
            for _ in range(steps):
                self._send(g)
                self._record(g, g.envs.recv(), parts, episodes)
        else:
            total = steps * len(groups)
            self._send(groups[0])
            for t in range(total):
                if t + 1 < total:  # the next group's actions go out before this one returns
                    self._send(groups[(t + 1) % len(groups)])
                g = groups[t % len(groups)]
                self._record(g, g.envs.recv(), parts, episodes)
        transitions = Transitions.concat(parts) if parts else self._empty()
        frames = None
        if groups[0].streams is not None:
            drained = [g.streams.drain() for g in groups if g.streams is not None]
            frames = type(drained[0])(*(np.concatenate(col) for col in zip(*drained,
                                                                            strict=True)))
        return Chunk(transitions, self.index, self.version, steps * self.num_envs,
                     episodes, float(np.mean(self.epsilons)), frames)

    def _empty(self) -> Transitions:
        g = self.groups[0]
        example = g.refs if g.refs is not None else g.obs
        shape = (0, *example.shape[1:])
        return Transitions(np.empty(shape, example.dtype), np.empty(0, np.int64),
                           np.empty(0, np.float32), np.empty(0, np.float32),
                           np.empty(shape, example.dtype))

    def close(self) -> None:
        for g in self.groups:
            g.envs.close()
