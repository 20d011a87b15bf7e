"""The Actor: a vector of envs, a CPU copy of the Q-network, ε-greedy, the n-step adder.

Plain Python, no Ray: `collect()` steps the envs and returns a `Chunk`; the Ray wrapper
(`qfleet.remote`) decides when to send it and when to swap in new weights.
"""

from __future__ import annotations

import numpy as np
import torch

from qfleet.actors.epsilon import fleet_epsilons
from qfleet.actors.frames import FrameStreams
from qfleet.actors.nstep import NStepAdder
from qfleet.config import Config
from qfleet.envs import EnvSpec, clip_rewards_default, make_vec_env
from qfleet.networks import build_q_network
from qfleet.transitions import Chunk, Episode, Transitions, uses_frame_refs


class Actor:
    def __init__(self, config: Config, spec: EnvSpec, actor_index: int, seed: int) -> None:
        torch.set_num_threads(1)  # one core per actor; intra-op threads only contend
        self.config, self.index = config, actor_index
        a = config.actors
        self.envs = make_vec_env(config.env, a.envs_per_actor, seed)
        self.net = build_q_network(config.network, spec).eval()
        self.net.requires_grad_(False)
        self.version = 0
        self.obs = self.envs.reset(seed=seed)
        self.streams: FrameStreams | None = None
        if uses_frame_refs(config, spec):
            self.streams = FrameStreams(actor_index * a.envs_per_actor, a.envs_per_actor,
                                        spec.obs_shape[0])
            self.refs = self.streams.reset(self.obs)
            ref_shape, ref_dtype = (3,), np.dtype(np.int64)
        else:
            ref_shape, ref_dtype = spec.obs_shape, spec.obs_dtype
        # The adder carries observations, or frame references, without looking inside.
        self.adder = NStepAdder(a.envs_per_actor, config.learner.n_step, config.learner.gamma,
                                ref_shape, ref_dtype)
        self.epsilons = fleet_epsilons(a, actor_index)
        self.clip = clip_rewards_default(config.env)
        self.rng = np.random.default_rng(seed)
        n = a.envs_per_actor
        self._ep_return = np.zeros(n, dtype=np.float64)
        self._ep_length = np.zeros(n, dtype=np.int64)

    def set_weights(self, version: int, state: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict(state)
        self.version = version

    def set_fleet_step(self, fleet_step: int) -> None:
        """Linear ε decays with the fleet's env steps, which the learner reports."""
        if self.config.actors.epsilon == "linear":
            self.epsilons = fleet_epsilons(self.config.actors, self.index, fleet_step)

    def select_action(self, obs: np.ndarray) -> np.ndarray:
        """ε-greedy over the batch, one forward pass for the whole vector."""
        with torch.inference_mode():
            greedy = self.net(torch.from_numpy(obs)).argmax(dim=1).numpy()
        n = len(greedy)
        explore = self.rng.random(n) < self.epsilons
        if explore.any():
            rand = self.rng.integers(0, self.envs.num_actions, size=n)
            greedy = np.where(explore, rand, greedy)
        return greedy

    def collect(self, steps: int) -> Chunk:
        """Step every env `steps` times; return the completed transitions and episodes."""
        parts: list[Transitions] = []
        episodes: list[Episode] = []
        for _ in range(steps):
            actions = self.select_action(self.obs)
            step = self.envs.step(actions)
            rewards = np.clip(step.rewards, -1.0, 1.0) if self.clip else step.rewards
            done = step.terminated | step.truncated
            if self.streams is not None:
                next_refs, refs = self.streams.step(step.obs, step.next_obs, done)
                out = self.adder.add(self.refs, actions, rewards, step.terminated,
                                     step.truncated, next_refs)
                self.refs = refs
            else:
                out = self.adder.add(self.obs, actions, rewards, step.terminated,
                                     step.truncated, step.next_obs)
            if out is not None:
                parts.append(out)
            self._ep_return += step.rewards
            self._ep_length += 1
            for e in np.flatnonzero(done):
                episodes.append(Episode(float(self._ep_return[e]), int(self._ep_length[e]),
                                        bool(step.terminated[e])))
                self._ep_return[e] = 0.0
                self._ep_length[e] = 0
            self.obs = step.obs
        example = self.refs if self.streams is not None else self.obs
        transitions = Transitions.concat(parts) if parts else _empty_like(example)
        frames = self.streams.drain() if self.streams is not None else None
        return Chunk(transitions, self.index, self.version, steps * self.envs.num_envs,
                     episodes, float(np.mean(self.epsilons)), frames)

    def close(self) -> None:
        self.envs.close()


def _empty_like(obs: np.ndarray) -> Transitions:
    shape = (0, *obs.shape[1:])
    return Transitions(np.empty(shape, obs.dtype), np.empty(0, np.int64),
                       np.empty(0, np.float32), np.empty(0, np.float32),
                       np.empty(shape, obs.dtype))
