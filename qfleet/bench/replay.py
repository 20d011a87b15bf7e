"""`qfleet bench replay`: bytes per stored Atari transition (from the allocated tensors),
insert and sample throughput of the prioritized replay."""

from __future__ import annotations

from typing import Any

import torch

from qfleet.bench.common import atari_config, rate


def run(seconds: float, capacity: int = 100_000, device: str = "cpu") -> dict[str, Any]:
    from qfleet.actors.actor import Actor
    from qfleet.envs import env_spec
    from qfleet.learner.replay import DenseStorage, make_replay

    config = atari_config(["actors.num_actors=1", "actors.envs_per_actor=16",
                           "learner.n_step=3"])
    spec = env_spec(config.env)
    dev = torch.device(device)
    replay = make_replay("prioritized", capacity, spec.obs_shape, spec.obs_dtype, dev,
                         frame_refs=True, num_streams=16, window=64)
    total = replay.nbytes()
    actor = Actor(config, spec, 0, seed=0)
    chunks = [actor.collect(16) for _ in range(8)]
    actor.close()
    i = 0

    def insert() -> int:
        nonlocal i
        c = chunks[i % len(chunks)]
        i += 1
        replay.add(c.transitions, c.frames)
        return len(c.transitions)

    insert_rate = rate(insert, seconds / 2)
    while len(replay) < min(capacity, 20_000):
        insert()

    def sample() -> int:
        _, keys, _ = replay.sample(512)
        replay.update_priorities(keys, torch.rand(512, device=dev))
        return 512

    sample_rate = rate(sample, seconds / 2)
    return {"bench": "replay", "capacity": capacity, "device": device,
            "bytes_per_transition": total / capacity, "limit_bytes": 8192,
            "dense_bytes_per_transition": DenseStorage.bytes_per_item(spec.obs_shape,
                                                                      spec.obs_dtype),
            "insert_transitions_per_s": insert_rate,
            "sample_transitions_per_s": sample_rate}


def describe(result: dict[str, Any]) -> list[str]:
    return [f"Atari replay: {result['bytes_per_transition']:,.0f} bytes per stored "
            f"transition (limit {result['limit_bytes']:,}; two dense stacks would be "
            f"{result['dense_bytes_per_transition']:,})",
            f"insert {result['insert_transitions_per_s']:,.0f} transitions/s, "
            f"sample+update {result['sample_transitions_per_s']:,.0f} transitions/s"]


def headline(result: dict[str, Any]) -> list[tuple[str, str]]:
    return [("Atari replay memory per stored transition",
             f"{result['bytes_per_transition']:,.0f} bytes (two dense stacks: "
             f"{result['dense_bytes_per_transition']:,})")]
