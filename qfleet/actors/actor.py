"""The Actor: a vector of envs, an acting copy of the Q-network, ε-greedy, the n-step adder.

Plain Python, no Ray: `collect()` steps the envs and returns a `Chunk`; the Ray wrapper
(`qfleet.actors.worker`) decides when to send it and when to swap in new weights.

Atari envs run as a batched ALE vector (EnvPool-style): the emulator thread steps some
envs while the Q-network picks the next actions of the batch that just returned, so
inference overlaps emulation instead of adding to it, and emulation goes on while a chunk
is being sent. The acting copy runs on the actor's core or, with `actors.device: cuda`, on a
share of its node's GPU (`actors/inference.py`), leaving the core to the emulator.
"""

from __future__ import annotations

import numpy as np
import torch

from qfleet.actors.epsilon import fleet_epsilons
from qfleet.actors.frames import FrameStreams
from qfleet.actors.inference import GreedyActions, acting_device
from qfleet.actors.nstep import NStepAdder
from qfleet.config import Config
from qfleet.envs import EnvSpec, Step, clip_rewards_default, make_vec_env
from qfleet.networks import build_q_network, faster_dtype
from qfleet.transitions import Chunk, Episode, Transitions, uses_frame_refs


def _rows(step: Step, rows: np.ndarray) -> Step:
    return Step(step.obs[rows], step.next_obs[rows], step.rewards[rows],
                step.terminated[rows], step.truncated[rows], step.env_ids[rows])


class Actor:
    def __init__(self, config: Config, spec: EnvSpec, actor_index: int, seed: int) -> None:
        torch.set_num_threads(1)  # one core per actor; intra-op threads only contend
        torch.manual_seed(seed)  # noisy nets' acting noise, reproducible from the seed
        self.config, self.index = config, actor_index
        a = config.actors
        e = self.num_envs = a.envs_per_actor
        batches = a.env_groups or (2 if spec.is_atari and e >= 2 else 1)
        batch = e // max(1, min(batches, e)) if spec.is_atari else 0
        batched = 0 < batch < e
        # Batched: one emulator thread beside the inference thread fills the actor's core
        # best; two contend with inference (`qfleet bench actors` measures it).
        self.emulator_threads = config.env.env_threads or (1 if batched else 2)
        self.envs = make_vec_env(config.env, e, seed, num_threads=self.emulator_threads,
                                 batch_size=batch)
        self.num_actions = self.envs.num_actions
        self.streams: FrameStreams | None = None
        if uses_frame_refs(config, spec):
            self.streams = FrameStreams(actor_index * e, e, spec.obs_shape[0])
            held_shape, held_dtype = (3,), np.dtype(np.int64)
        else:
            held_shape, held_dtype = spec.obs_shape, spec.obs_dtype
        # What the adder records for each env's current observation: the observation
        # itself, or its frame reference.
        self.held = np.zeros((e, *held_shape), dtype=held_dtype)
        self.adder = NStepAdder(e, config.learner.n_step, config.learner.gamma, held_shape,
                                held_dtype)
        self.actions = np.zeros(e, dtype=np.int64)
        self.ep_return = np.zeros(e, dtype=np.float64)
        self.ep_length = np.zeros(e, dtype=np.int64)
        self.epsilons = fleet_epsilons(a, actor_index)
        self.clip = clip_rewards_default(config.env)
        self.rng = np.random.default_rng(seed)
        self.device, self.device_note = acting_device(a.device)
        self.net = build_q_network(config, spec).eval().to(self.device)
        self.net.requires_grad_(False)
        self.version = 0
        ids, obs = self.envs.start(seed)
        self._begin(ids, obs)
        self.net.cast(self._acting_dtype(spec, obs))
        self.greedy = GreedyActions(self.net, self.device)
        self._act(ids, obs)

    def _acting_dtype(self, spec: EnvSpec, sample: np.ndarray) -> torch.dtype:
        chosen = self.config.actors.inference_dtype
        if chosen == "auto":
            if self.device.type == "cuda":  # a graph replay: the dtype hardly matters
                return torch.float32
            if len(spec.obs_shape) != 3:  # small MLPs: the casts cost more than they save
                return torch.float32
            return faster_dtype(self.net, torch.from_numpy(sample))
        return torch.bfloat16 if chosen == "bfloat16" else torch.float32

    def set_weights(self, version: int, state: dict[str, torch.Tensor]) -> None:
        self.greedy.load(state)
        self.version = version

    def set_fleet_step(self, fleet_step: int) -> None:
        """Linear ε decays with the fleet's env steps, which the learner reports."""
        if self.config.actors.epsilon == "linear":
            self.epsilons = fleet_epsilons(self.config.actors, self.index, fleet_step)

    def select_action(self, obs: np.ndarray, epsilons: np.ndarray) -> np.ndarray:
        """ε-greedy over the batch; the network runs only for the envs acting greedily."""
        n = len(obs)
        explore = self.rng.random(n) < epsilons
        actions = self.rng.integers(0, self.num_actions, size=n)
        greedy = np.flatnonzero(~explore)
        if greedy.size:
            actions[greedy] = self.greedy(obs, greedy)
        return actions

    def _begin(self, ids: np.ndarray, obs: np.ndarray) -> None:
        """Envs on their first reset observation: nothing to record yet."""
        self.held[ids] = obs if self.streams is None else self.streams.reset(obs, ids)

    def _act(self, ids: np.ndarray, obs: np.ndarray) -> None:
        actions = self.select_action(obs, self.epsilons[ids])
        self.actions[ids] = actions
        self.envs.send(actions)

    def _record(self, step: Step, parts: list[Transitions], episodes: list[Episode]) -> int:
        """Feed one returned batch to the adder; return the env steps it held."""
        if step.fresh is not None:
            self._begin(step.env_ids[step.fresh], step.obs[step.fresh])
            step = _rows(step, np.flatnonzero(~step.fresh))
            if not len(step.env_ids):
                return 0
        ids = step.env_ids
        rewards = np.clip(step.rewards, -1.0, 1.0) if self.clip else step.rewards
        done = step.terminated | step.truncated
        if self.streams is not None:
            next_held, held = self.streams.step(step.obs, step.next_obs, done, ids)
        else:
            next_held, held = step.next_obs, step.obs
        out = self.adder.add(self.held[ids], self.actions[ids], rewards, step.terminated,
                             step.truncated, next_held, ids)
        self.held[ids] = held
        if out is not None:
            parts.append(out)
        self.ep_return[ids] += step.rewards
        self.ep_length[ids] += 1
        for row in np.flatnonzero(done):
            e = ids[row]
            episodes.append(Episode(float(self.ep_return[e]), int(self.ep_length[e]),
                                    bool(step.terminated[row])))
            self.ep_return[e] = 0.0
            self.ep_length[e] = 0
        return len(ids)

    def collect(self, steps: int) -> Chunk:
        """Step the envs `steps` times each (on average when batched); return the completed
        transitions and episodes. Actions for the next steps are already sent on return."""
        parts: list[Transitions] = []
        episodes: list[Episode] = []
        target, env_steps = steps * self.num_envs, 0
        while env_steps < target:
            step = self.envs.recv()
            env_steps += self._record(step, parts, episodes)
            self._act(step.env_ids, step.obs)
        transitions = Transitions.concat(parts) if parts else self._empty()
        frames = self.streams.drain() if self.streams is not None else None
        return Chunk(transitions, self.index, self.version, env_steps, episodes,
                     float(np.mean(self.epsilons)), frames, device=self.device.type)

    def _empty(self) -> Transitions:
        shape = (0, *self.held.shape[1:])
        return Transitions(np.empty(shape, self.held.dtype), np.empty(0, np.int64),
                           np.empty(0, np.float32), np.empty(0, np.float32),
                           np.empty(shape, self.held.dtype))

    def close(self) -> None:
        self.envs.close()
