"""`qfleet bench envs`: the ALE vector env against one plain Gymnasium env with the same
DQN preprocessing."""

from __future__ import annotations

from typing import Any

from qfleet.bench.common import ATARI, atari_config, bare_stepper, interleaved


def run(seconds: float, envs: int = 16, threads: int = 2) -> dict[str, Any]:
    import ale_py
    import gymnasium as gym
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    config = atari_config([f"env.env_threads={threads}"])
    vec, vec_step = bare_stepper(config, envs, seed=0)

    gym.register_envs(ale_py)
    single = FrameStackObservation(AtariPreprocessing(
        gym.make(ATARI, frameskip=1), frame_skip=4, noop_max=30), 4)
    single.reset(seed=0)

    def single_step() -> int:
        _, _, term, trunc, _ = single.step(single.action_space.sample())
        if term or trunc:
            single.reset()
        return 1

    vec_rate, single_rate = interleaved(vec_step, single_step, seconds=seconds)
    vec.close()
    single.close()
    return {"bench": "envs", "env": ATARI, "envs": envs, "threads": threads,
            "vector_steps_per_s": vec_rate, "single_env_steps_per_s": single_rate,
            "ratio": vec_rate / single_rate}


def describe(result: dict[str, Any]) -> list[str]:
    return [f"ALE vector env ({result['envs']} envs, {result['threads']} threads): "
            f"{result['vector_steps_per_s']:,.0f} steps/s",
            f"one Gymnasium env, same preprocessing: "
            f"{result['single_env_steps_per_s']:,.0f} steps/s "
            f"(vector/single {result['ratio']:.2f}x)"]
