"""`qfleet bench learner`: Learner.step (sampling, priorities, target sync, publishing)
against a bare torch loop with the same network, loss, clipping and optimizer."""

from __future__ import annotations

import copy
from typing import Any

import torch

from qfleet.bench.common import atari_config, interleaved


def run(seconds: float, batch_size: int = 32, device: str = "auto",
        replay: str = "prioritized", cuda_graph: bool = True, head: str = "none",
        noisy: bool = False, threads: int = 1) -> dict[str, Any]:
    from qfleet.actors.actor import Actor
    from qfleet.envs import env_spec
    from qfleet.learner.learner import Learner, make_adam, pick_device
    from qfleet.learner.loss import dqn_loss

    dev = pick_device(device)
    config = atari_config([f"learner.batch_size={batch_size}", f"replay.kind={replay}",
                           "replay.capacity=20000", "replay.min_size=1000",
                           "learner.double_dqn=true", "learner.loss=huber",
                           "learner.grad_clip=10", "learner.target_update_every=1000",
                           "network.dueling=true", "learner.publish_every=50",
                           "actors.num_actors=1", "actors.envs_per_actor=16",
                           f"learner.cuda_graph={cuda_graph}",
                           f"learner.distribution={head}", f"network.noisy={noisy}",
                           f"learner.num_threads={threads}"])
    spec = env_spec(config.env)
    learner = Learner(config, spec, dev)
    actor = Actor(config, spec, 0, seed=0)
    while len(learner.replay) < 4000:
        learner.add(actor.collect(16))
    actor.close()
    torch.set_num_threads(threads)  # as the learner's process does (the actor set one)
    batch, _, _ = learner.replay.sample(batch_size)

    # The bare loop: the same network, loss, clipping and Adam on one fixed batch.
    online = copy.deepcopy(learner.online)
    target = copy.deepcopy(learner.target)
    opt = make_adam(online.parameters(), 1e-4, 1.5e-4, dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def bare_update(k: int = 10) -> int:
        for _ in range(k):
            loss, _ = dqn_loss(online, target, *batch, double=True, kind="huber")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(online.parameters(), 10.0)
            opt.step()
        sync()
        return k

    def learner_update(k: int = 10) -> int:
        for _ in range(k):
            learner.step(learner.sample())
            if learner.updates % config.learner.publish_every == 0:
                learner.get_weights()
        sync()
        return k

    ours, bare = interleaved(learner_update, bare_update, seconds=seconds)
    return {"bench": "learner", "device": str(dev), "batch_size": batch_size,
            "network": "nature_cnn+dueling" + ("+noisy" if noisy else ""),
            "head": head, "replay": replay, "threads": torch.get_num_threads(),
            "cuda_graph": cuda_graph and dev.type == "cuda",
            "learner_updates_per_s": ours, "bare_updates_per_s": bare, "ratio": ours / bare}


def describe(result: dict[str, Any]) -> list[str]:
    graph = ", one CUDA graph an update" if result.get("cuda_graph") else ""
    head = "" if result.get("head", "none") == "none" else f", {result['head']} head"
    threads = f", {result['threads']} threads" if result.get("threads", 1) > 1 else ""
    return [f"learner on {result['device']}{threads}, batch {result['batch_size']}, "
            f"{result['replay']} replay{head}{graph}: "
            f"{result['learner_updates_per_s']:,.1f} updates/s",
            f"bare torch loop, same network/loss/optimizer: "
            f"{result['bare_updates_per_s']:,.1f} updates/s",
            f"ratio {result['ratio']:.2f} (target >= 0.90)"]


def headline(result: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"Learner.step against a bare torch loop (Nature CNN, batch "
             f"{result['batch_size']}, {result['device']})",
             f"{result['learner_updates_per_s']:,.1f} vs {result['bare_updates_per_s']:,.1f} "
             f"updates/s (ratio {result['ratio']:.2f})")]
