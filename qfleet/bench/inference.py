"""`qfleet bench inference`: where the actors' greedy actions should be computed.

Two designs, measured on the same Ray, device and batches, one after the other:
- `per_actor` (qfleet's): each actor process holds its acting network on the device
  (`actors.device`) and runs its own batches (`actors/inference.py`: one CUDA graph per
  batch shape on a GPU);
- `central` (SEED RL, Espeholt et al. 2020): one inference server holds the network; each
  actor sends its observations through Ray and waits for the actions, and the server runs
  whatever requests are waiting as one batch.

Each client loops as an actor does, one batch of `batch` Atari observations after another,
and reports calls, latency and the CPU time the call cost its own process: the CPU an
actor's core loses to inference instead of emulation.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from typing import Any

import numpy as np

from qfleet.bench.common import atari_config


def _network(device: str) -> Any:
    import torch

    from qfleet.actors.inference import GreedyActions, acting_device
    from qfleet.envs import env_spec
    from qfleet.networks import build_q_network

    torch.set_num_threads(1)
    config = atari_config(["network.dueling=true"])
    spec = env_spec(config.env)
    dev, _ = acting_device(device)
    torch.manual_seed(0)
    net = build_q_network(config, spec).eval().requires_grad_(False).to(dev)
    return GreedyActions(net, dev, capture=dev.type == "cuda"), dev


class Server:
    """The central design's server: requests queue on its event loop; one thread runs
    all that are waiting as one batch, padded to `rows` (every client's batch at once, as
    SEED RL's fixed inference batch: one CUDA graph), and answers each."""

    def __init__(self, device: str, rows: int) -> None:
        self.greedy, self.device = _network(device)
        self.rows = rows
        self.pending: list[tuple[np.ndarray, asyncio.Future, asyncio.AbstractEventLoop]] = []
        self.cond = threading.Condition()
        self.batches: list[int] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: bool(self.pending))
                taken, self.pending = self.pending, []
            obs = np.concatenate([o for o, _, _ in taken])
            padded = np.zeros((self.rows, *obs.shape[1:]), dtype=obs.dtype)
            padded[:len(obs)] = obs
            actions = self.greedy(padded, np.arange(len(obs)))
            self.batches.append(len(taken))
            start = 0
            for o, future, loop in taken:
                part = actions[start:start + len(o)]
                start += len(o)
                loop.call_soon_threadsafe(future.set_result, part)

    async def act(self, obs: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self.cond:
            self.pending.append((obs, future, loop))
            self.cond.notify()
        return await future

    def mean_batch(self) -> float:
        return statistics.mean(self.batches) if self.batches else 0.0


class Client:
    """One actor's inference loop: `per_actor` on its own network, or through `server`."""

    def __init__(self, device: str, batch: int, seed: int, server: Any = None) -> None:
        self.server = server
        self.greedy, self.device = (None, None) if server else _network(device)
        shape = (batch, 4, 84, 84)
        rng = np.random.default_rng(seed)
        self.obs = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(4)]
        self.rows = np.arange(batch)

    def loop(self, seconds: float) -> dict[str, float]:
        import ray

        def call(obs: np.ndarray) -> np.ndarray:
            if self.server is not None:
                return ray.get(self.server.act.remote(obs))
            return self.greedy(obs, self.rows)

        for k in range(4):  # warm-up: captures, first Ray calls
            call(self.obs[k])
        latencies: list[float] = []
        cpu0, start = time.process_time(), time.perf_counter()
        while (now := time.perf_counter()) - start < seconds:
            call(self.obs[len(latencies) % 4])
            latencies.append(time.perf_counter() - now)
        elapsed = time.perf_counter() - start
        calls = len(latencies)
        return {"calls_per_s": calls / elapsed,
                "latency_ms_median": 1e3 * statistics.median(latencies),
                "cpu_ms_per_call": 1e3 * (time.process_time() - cpu0) / calls}


def _measure(design: str, clients: int, batch: int, seconds: float, device: str,
             gpu_share: float) -> dict[str, Any]:
    import ray

    opts: dict[str, Any] = {"num_cpus": 1}
    if gpu_share:
        opts["num_gpus"] = gpu_share
    server = None
    if design == "central":
        server = ray.remote(Server).options(**opts, max_concurrency=1000).remote(
            device, clients * batch)
    client_opts = {"num_cpus": 1} if server else opts
    fleet = [ray.remote(Client).options(**client_opts).remote(device, batch, i, server)
             for i in range(clients)]
    results = ray.get([c.loop.remote(seconds) for c in fleet])
    mean_batch = ray.get(server.mean_batch.remote()) if server else 1.0
    for actor in [*fleet, *([server] if server else [])]:
        ray.kill(actor)
    return {"calls_per_s": sum(r["calls_per_s"] for r in results),
            "latency_ms_median": statistics.median(r["latency_ms_median"] for r in results),
            "client_cpu_ms_per_call": statistics.median(r["cpu_ms_per_call"]
                                                        for r in results),
            "requests_per_server_batch": mean_batch}


def run(seconds: float, clients: int = 2, batch: int = 8, device: str = "auto",
        rounds: int = 2) -> dict[str, Any]:
    import ray
    import torch

    from qfleet.driver.placement import connect_ray

    device = "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()
                                           ) else "cpu"
    # Clients and server each hold a CPU: on a small machine, Ray's logical CPUs may
    # outnumber the cores (as `qfleet train` allows), and the figures say so.
    connect_ray(None, clients + 1)
    gpus = ray.cluster_resources().get("GPU", 0.0)
    share = 1.0 / (clients + 1) if device == "cuda" and gpus >= 1 else 0.0
    runs: dict[str, list[dict[str, Any]]] = {"per_actor": [], "central": []}
    for _ in range(rounds):  # alternating, so machine noise hits both
        for design in runs:
            runs[design].append(_measure(design, clients, batch, seconds / (2 * rounds),
                                         device, share))
    ray.shutdown()
    summary = {design: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
               for design, rs in runs.items()}
    per, central = summary["per_actor"], summary["central"]
    return {"bench": "inference", "device": device, "clients": clients, "batch": batch,
            "network": "nature_cnn+dueling", "rounds": rounds, **summary,
            "winner": ("per_actor" if per["calls_per_s"] >= central["calls_per_s"]
                       else "central"),
            "per_actor_over_central": per["calls_per_s"] / central["calls_per_s"]}


def describe(result: dict[str, Any]) -> list[str]:
    lines = [f"{result['clients']} actors, batches of {result['batch']} Atari observations, "
             f"network on {result['device']}:"]
    for design in ("per_actor", "central"):
        r = result[design]
        lines.append(f"  {design:9s}: {r['calls_per_s']:,.0f} batches/s in all, latency "
                     f"{r['latency_ms_median']:.2f} ms, {r['client_cpu_ms_per_call']:.2f} ms "
                     f"of the actor's CPU per batch"
                     + (f", {r['requests_per_server_batch']:.1f} requests per server batch"
                        if design == "central" else ""))
    lines.append(f"winner: {result['winner']} ({result['per_actor_over_central']:.2f}x the "
                 "central server's batches/s)")
    return lines
