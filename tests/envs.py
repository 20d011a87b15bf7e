"""Environments for fault tests, registered on import: made by `env.id=tests.envs:<Name>`
in the driver and in every Ray worker, as Gymnasium's `module:EnvName` form does."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class BrokenResetEnv(gym.Env):
    """Valid spaces, so the run starts; every reset raises, as a broken emulator would."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        raise RuntimeError("the emulator refused to reset (tests.envs.BrokenResetEnv)")

    def step(self, action):
        raise AssertionError("never reached: reset always fails")


gym.register("BrokenReset-v0", entry_point=BrokenResetEnv)


class Corridor(gym.Env):
    """A corridor of `length` cells: step right (1) to reach the end and a reward of 1,
    left (0) goes back. Solved by always stepping right; what a custom env looks like."""

    action_space = gym.spaces.Discrete(2)

    def __init__(self, length: int = 5) -> None:
        self.length = length
        self.observation_space = gym.spaces.Box(0.0, 1.0, (length,), np.float32)
        self.position = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.length, np.float32)
        obs[self.position] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.position = 0
        return self._obs(), {}

    def step(self, action):
        self.position = max(0, min(self.length - 1, self.position + (1 if action else -1)))
        done = self.position == self.length - 1
        return self._obs(), float(done), done, False, {}


def make_corridor(length: int = 5, **kwargs) -> gym.Env:
    """A factory, as `env.id=tests.envs:make_corridor` uses one."""
    return Corridor(length, **kwargs)


class SteeringWheel(Corridor):
    """Continuous actions: DQN cannot act in it."""

    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


def not_an_env(**kwargs) -> str:
    return "a string"


gym.register("QfleetCorridor-v0", entry_point=Corridor)


class Treadmill(Corridor):
    """A corridor without an end: an episode lasts until something cuts it (the step cap,
    an evaluation's time limit), as a barely trained Breakout agent's does."""

    def step(self, action):
        obs, _, _, truncated, info = super().step(action)
        return obs, 0.0, False, truncated, info
