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
