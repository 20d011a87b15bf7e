"""`qfleet bench actors`: one Actor (inference, ε-greedy, n-step, frame streams) as it
runs in a fleet, against the bare vector env on the same cores."""

from __future__ import annotations

from typing import Any

import torch

from qfleet.bench.common import ATARI, atari_config, bare_stepper, interleaved


def run(seconds: float, envs: int = 16, threads: int = 2) -> dict[str, Any]:
    from qfleet.actors.actor import Actor
    from qfleet.envs import env_spec

    config = atari_config([f"actors.envs_per_actor={envs}", "actors.num_actors=1",
                           "learner.n_step=3", "network.dueling=true"])
    spec = env_spec(config.env)
    actor = Actor(config, spec, 0, seed=0)
    bare, bare_step = bare_stepper(atari_config([f"env.env_threads={threads}"]), envs, 1)
    # The same envs on only the actor's emulator threads: how much of its own emulation
    # speed the actor keeps with inference and bookkeeping beside it.
    own = actor.emulator_threads
    bare_own, bare_own_step = bare_stepper(atari_config([f"env.env_threads={own}"]), envs, 2)

    def actor_chunk() -> int:
        return actor.collect(4).env_steps

    actor_rate, bare_rate, own_rate = interleaved(actor_chunk, bare_step, bare_own_step,
                                                  seconds=seconds)
    result = {"bench": "actors", "env": ATARI, "envs": envs, "threads": threads,
              "actor_batch": actor.envs.batch_size,
              "actor_emulator_threads": actor.emulator_threads,
              "actor_inference_dtype": str(actor.net.compute_dtype).removeprefix("torch."),
              "torch_threads": torch.get_num_threads(),
              "actor_steps_per_s": actor_rate, "bare_env_steps_per_s": bare_rate,
              "ratio": actor_rate / bare_rate,
              "bare_env_own_threads_steps_per_s": own_rate,
              "ratio_own_threads": actor_rate / own_rate}
    actor.close()
    bare.close()
    bare_own.close()
    return result


def describe(result: dict[str, Any]) -> list[str]:
    return [f"actor, inference included ({result['envs']} envs in batches of "
            f"{result['actor_batch']}, {result['actor_emulator_threads']} emulator "
            f"thread(s), {result['actor_inference_dtype']} inference): "
            f"{result['actor_steps_per_s']:,.0f} env steps/s",
            f"bare vector env, same envs, {result['threads']} threads: "
            f"{result['bare_env_steps_per_s']:,.0f} env steps/s",
            f"ratio {result['ratio']:.2f} (target >= 0.80)",
            f"bare vector env on the actor's {result['actor_emulator_threads']} emulator "
            f"thread(s): {result['bare_env_own_threads_steps_per_s']:,.0f} env steps/s "
            f"(actor keeps {result['ratio_own_threads']:.2f} of it)"]


def headline(result: dict[str, Any]) -> list[tuple[str, str]]:
    return [("Atari actor, inference included, against its bare vector env",
             f"{result['actor_steps_per_s']:,.0f} vs {result['bare_env_steps_per_s']:,.0f} "
             f"env steps/s (ratio {result['ratio']:.2f})")]
