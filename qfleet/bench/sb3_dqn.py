"""Stable-Baselines3's DQN with the rl-baselines3-zoo hyperparameters, trained on a
wall-clock budget and evaluated greedily on the way: the peer of `qfleet bench learning`.

Run as its own process (`python -m qfleet.bench.sb3_dqn SPEC_JSON OUT_JSON`) so that its
start-up counts as qfleet's does. Evaluation follows qfleet's protocol: on Atari the same
emulator settings (sticky 0.25 without no-ops, or 30 no-ops), no life-loss episodes, raw
rewards, ε = 0.001, the 108,000-frame cap; its time counts against the budget, as SB3's
`EvalCallback` would.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# rl-baselines3-zoo, hyperparams/dqn.yml: the `atari` entry and `CartPole-v1`.
ZOO = {
    "atari": dict(policy="CnnPolicy", buffer_size=10_000, learning_rate=1e-4, batch_size=32,
                  learning_starts=100_000, target_update_interval=1000, train_freq=4,
                  gradient_steps=1, exploration_fraction=0.1, exploration_final_eps=0.01,
                  optimize_replay=True, total_timesteps=10_000_000),
    "CartPole-v1": dict(policy="MlpPolicy", learning_rate=2.3e-3, batch_size=64,
                        buffer_size=100_000, learning_starts=1000, gamma=0.99,
                        target_update_interval=10, train_freq=256, gradient_steps=128,
                        exploration_fraction=0.16, exploration_final_eps=0.04,
                        policy_kwargs={"net_arch": [256, 256]}, total_timesteps=50_000),
}


def zoo_hyperparameters(env_id: str, atari: bool) -> dict[str, Any]:
    key = "atari" if atari else env_id
    if key not in ZOO:
        raise ValueError(f"no rl-zoo DQN hyperparameters for {env_id!r} here "
                         f"(known: Atari games, {', '.join(k for k in ZOO if k != 'atari')})")
    return dict(ZOO[key])


def make_env(env_id: str, atari: bool, train: bool, protocol: str, max_steps: int) -> Any:
    """One env as the zoo wraps it for training, or under qfleet's protocol for evaluation."""
    import gymnasium as gym

    if not atari:
        return gym.make(env_id)
    import ale_py
    from stable_baselines3.common.atari_wrappers import AtariWrapper

    gym.register_envs(ale_py)
    sticky = 0.25 if env_id.endswith("-v5") else 0.0
    noops = 30
    if not train:
        sticky, noops = (0.25, 0) if protocol == "sticky" else (0.0, 30)
    env = gym.make(env_id, frameskip=1, repeat_action_probability=sticky,
                   max_num_frames_per_episode=max_steps * 4)
    return AtariWrapper(env, noop_max=noops, terminal_on_life_loss=train, clip_reward=train)


def main(spec_path: str, out_path: str) -> None:
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack

    spec = json.loads(Path(spec_path).read_text())
    started = spec["started"]  # the bench's clock at this process's launch
    env_id, atari, seed = spec["env_id"], spec["atari"], spec["seed"]
    hp = zoo_hyperparameters(env_id, atari)
    total = hp.pop("total_timesteps")
    if hp.pop("optimize_replay", False):
        hp["optimize_memory_usage"] = True
        hp["replay_buffer_kwargs"] = {"handle_timeout_termination": False}

    def vec(n: int, train: bool, base: int) -> Any:
        envs = DummyVecEnv([lambda: make_env(env_id, atari, train, spec["protocol"],
                                             spec["max_steps"]) for _ in range(n)])
        envs.seed(base)
        return VecFrameStack(envs, 4) if atari else envs

    # Atari's CNN on the GPU where there is one (SB3's "auto"); an MLP runs faster on the CPU.
    device = "auto" if atari else "cpu"
    model = DQN(env=vec(1, True, seed), seed=seed, verbose=0, device=device, **hp)
    # A logger that writes nowhere: SB3's default makes an empty SB3-<date> folder in /tmp
    # on every run.
    model.set_logger(Logger(folder=None, output_formats=[]))
    curve: list[dict[str, Any]] = []
    rng = np.random.default_rng(seed)

    def evaluate() -> dict[str, float]:
        n = spec["episodes"]
        envs = vec(n, False, 1_000_003 + len(curve) * n)
        obs = envs.reset()
        returns, lengths = np.zeros(n), np.zeros(n, dtype=np.int64)
        done_at: list[float | None] = [None] * n
        while any(d is None for d in done_at):
            actions, _ = model.predict(obs, deterministic=True)
            explore = rng.random(n) < spec["epsilon"]
            actions = np.where(explore, rng.integers(0, envs.action_space.n, n), actions)
            obs, rewards, dones, _ = envs.step(actions)
            returns += rewards
            lengths += 1
            for e in np.flatnonzero(dones | (lengths >= spec["max_steps"])):
                if done_at[e] is None:
                    done_at[e] = float(returns[e])
        envs.close()
        values = [float(d) for d in done_at if d is not None]
        sem = float(np.std(values, ddof=1) / np.sqrt(n)) if n > 1 else 0.0
        return {"return_mean": float(np.mean(values)), "return_sem": sem}

    class Clock(BaseCallback):
        """Evaluate every `every_s` of wall time; stop at the budget or the target."""

        def __init__(self) -> None:
            super().__init__()
            self.next_eval = started + spec["every_s"]
            self.eval_s = 0.0

        def _on_step(self) -> bool:
            now = time.time()
            if now < self.next_eval:
                return now - started < spec["seconds"]
            point = {"seconds": 0.0, "env_steps": int(self.num_timesteps), **evaluate()}
            self.eval_s += time.time() - now
            point["seconds"] = time.time() - started
            point["eval_s"] = self.eval_s  # seconds spent evaluating so far, this one too
            curve.append(point)
            self.next_eval = time.time() + spec["every_s"]
            target = spec["target"]
            if target is not None and point["return_mean"] >= target:
                return False
            return time.time() - started < spec["seconds"]

    # The zoo's total steps set its ε schedule; the budget or the target usually ends first.
    model.learn(total_timesteps=total, callback=Clock())
    with open(out_path, "w") as out:
        json.dump({"curve": curve, "env_steps": int(model.num_timesteps),
                   "updates": int(model._n_updates)}, out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
