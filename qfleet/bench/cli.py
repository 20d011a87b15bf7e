"""`qfleet bench <name>`: one subcommand per benchmark, each with only the options it takes,
so an option a benchmark would ignore is refused instead."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(no_args_is_help=True, help="Measure a part of the pipeline against its "
                  "limit (benchmarks print figures; they never assert).")

_saved: dict[str, Path | None] = {"to": None}


@app.callback()
def options(save: Annotated[Path | None, typer.Option(
        help="Also write the result, with its command, date, machine and qfleet version, "
             "to this JSON file: a figure to publish under docs/benchmarks/ (the docs' "
             "benchmark page and the README's table are generated from those files).")
        ] = None) -> None:
    """Options of every benchmark."""
    if save is not None and not save.resolve().parent.is_dir():  # before a long run, not after
        raise typer.BadParameter(f"no directory {str(save.parent)!r}", param_hint="--save")
    _saved["to"] = save


def _command_line() -> list[str]:
    """This command as typed, less `--save FILE` (which says where, not what, was run)."""
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg == "--save":
            return argv[:i] + argv[i + 2:]
        if arg.startswith("--save="):
            return argv[:i] + argv[i + 1:]
    return argv


Seconds = Annotated[float, typer.Option(min=0.5, help="Measuring time.")]
AsJson = Annotated[bool, typer.Option("--json", help="End with one JSON line.")]


def _report(name: str, *args: Any, as_json: bool, **kwargs: Any) -> None:
    """Run benchmark `name`, print its human lines and (optionally) its JSON line."""
    from qfleet.errors import QfleetError

    module = importlib.import_module(f"qfleet.bench.{name}")
    try:
        result = module.run(*args, **kwargs)
    except QfleetError as err:
        print(f"qfleet: error: {err}", file=sys.stderr)
        raise typer.Exit(2) from None
    except RuntimeError as err:  # a run it started failed: one line, as every failure
        print(f"qfleet: error: {err}", file=sys.stderr)
        raise typer.Exit(1) from None
    for line in module.describe(result):
        print(line)
    if as_json:
        print(json.dumps(result))
    if _saved["to"] is not None:
        from qfleet.bench.published import envelope, save

        save(_saved["to"], envelope(name, _command_line(), result))


def _device(value: str) -> str:
    if value not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter(f"expected auto, cpu or cuda, got {value!r}")
    return value


def _head(value: str) -> str:
    if value not in ("none", "c51", "qr"):
        raise typer.BadParameter(f"expected none, c51 or qr, got {value!r}")
    return value


@app.command()
def envs(seconds: Seconds = 9.0, as_json: AsJson = False) -> None:
    """ALE vector env vs one Gymnasium env with the same preprocessing."""
    _report("envs", seconds, as_json=as_json)


@app.command()
def actors(seconds: Seconds = 9.0, as_json: AsJson = False) -> None:
    """One actor, inference included, vs the bare vector env on the same cores."""
    _report("actors", seconds, as_json=as_json)


@app.command()
def learner(seconds: Seconds = 9.0,
            batch_size: Annotated[int, typer.Option(min=1, help="Batch size.")] = 32,
            device: Annotated[str, typer.Option(help="auto, cpu or cuda.",
                                                callback=_device)] = "auto",
            cuda_graph: Annotated[bool, typer.Option(
                help="On a GPU, the learner's update as one CUDA graph "
                     "(learner.cuda_graph).")] = True,
            head: Annotated[str, typer.Option(
                help="Value head: none, c51 or qr (learner.distribution).",
                callback=_head)] = "none",
            noisy: Annotated[bool, typer.Option(help="Noisy nets (network.noisy).")] = False,
            threads: Annotated[int, typer.Option(
                min=1, help="torch's threads for a CPU update (learner.num_threads).")] = 1,
            as_json: AsJson = False) -> None:
    """Learner.step vs a bare torch loop with the same network, loss and optimizer."""
    _report("learner", seconds, batch_size=batch_size, device=device, cuda_graph=cuda_graph,
            head=head, noisy=noisy, threads=threads, as_json=as_json)


@app.command()
def inference(seconds: Seconds = 12.0,
              actors: Annotated[int, typer.Option(min=1, help="Actor processes.")] = 2,
              batch: Annotated[int, typer.Option(min=1, help="Observations per batch "
                                                             "(an actor's env group).")] = 8,
              device: Annotated[str, typer.Option(help="auto, cpu or cuda.",
                                                  callback=_device)] = "auto",
              as_json: AsJson = False) -> None:
    """Acting network per actor (qfleet) vs one central inference server (SEED RL)."""
    _report("inference", seconds, clients=actors, batch=batch, device=device,
            as_json=as_json)


@app.command()
def replay(seconds: Seconds = 9.0,
           device: Annotated[str, typer.Option(help="cpu or cuda.",
                                               callback=_device)] = "cpu",
           as_json: AsJson = False) -> None:
    """Bytes per stored Atari transition; insert and sample throughput."""
    _report("replay", seconds, device="cuda" if device == "cuda" else "cpu", as_json=as_json)


@app.command()
def pipeline(seconds: Seconds = 9.0,
             actors: Annotated[int, typer.Option(min=1, help="Number of actors.")] = 2,
             env_id: Annotated[str, typer.Option("--env", help="Env id.")] = "CartPole-v1",
             address: Annotated[str | None, typer.Option(help="Ray address.")] = None,
             actor_resources: Annotated[str | None, typer.Option(
                 help='JSON resources per actor, e.g. \'{"qfleet_actor": 1}\'.')] = None,
             as_json: AsJson = False) -> None:
    """Transitions/s into the learner's replay and CPU-µs per transition crossing."""
    from qfleet.api import local_token_auth

    local_token_auth(address)
    try:
        resources = json.loads(actor_resources) if actor_resources else None
    except json.JSONDecodeError as err:
        raise typer.BadParameter(f"not JSON: {err}", param_hint="--actor-resources") from None
    _report("pipeline", seconds, actors=actors, env_id=env_id, address=address,
            actor_resources=resources, as_json=as_json)


@app.command()
def fleet(
    config: Annotated[str, typer.Option(help="qfleet config of the fleet to run, e.g. "
                                             "configs/atari-1gpu.yaml.")],
    seconds: Annotated[float, typer.Option(min=1.0, help="Measuring window, once every "
                                                        "actor streams.")] = 30.0,
    bare_seconds: Annotated[float, typer.Option(
        min=0.5, help="Measuring time of the bare envs, one per actor, all at once.")] = 10.0,
    learner_alone: Annotated[bool | None, typer.Option(
        "--learner-alone/--no-learner-alone",
        help="Then `bench learner` at the same batch (default: for Atari envs).")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(
        help="Overrides of the config, e.g. actors.device=cpu.")] = None,
    as_json: AsJson = False,
) -> None:
    """The whole fleet of a config on this machine: env steps/s against the bare envs,
    learner updates/s, replay ratio, policy lag, GPU busy, memory."""
    _report("fleet", seconds, config, overrides or [], bare_seconds=bare_seconds,
            learner_alone=learner_alone, as_json=as_json)


@app.command()
def soak(seconds: Seconds = 660.0, as_json: AsJson = False) -> None:
    """Memory of every process of a real spaceinvaders-cpu run: flat once the replay is full."""
    _report("soak", seconds, as_json=as_json)


@app.command()
def recovery(seconds: Seconds = 9.0,
             kill_after: Annotated[float, typer.Option(
                 min=1.0, help="Seconds of training before the kill.")] = 20.0,
             as_json: AsJson = False) -> None:
    """SIGKILL one of the run's actors: seconds until throughput is back."""
    _report("recovery", seconds, kill_after_s=kill_after, as_json=as_json)


@app.command()
def chaos(seconds: Annotated[float, typer.Option(min=30.0, help="Length of each run.")] = 150.0,
          kills: Annotated[int, typer.Option(min=1, max=20, help="Kills a run.")] = 4,
          learner_kills: Annotated[int | None, typer.Option(
              min=0, help="How many of the kills hit the learner or its node (default: "
                          "half).")] = None,
          nodes: Annotated[int, typer.Option(
              min=0, max=8, help="Worker nodes of a local multi-node Ray whose whole nodes "
                                 "are killed (0: kill processes of an embedded Ray).")] = 0,
          replace_s: Annotated[float, typer.Option(
              min=0.0, help="Seconds after a node kill until a fresh node joins.")] = 10.0,
          seed: Annotated[int, typer.Option(help="Seed of the first kill schedule.")] = 0,
          seeds: Annotated[int, typer.Option(min=1, help="Runs, one seed each.")] = 1,
          checkpoint_every: Annotated[int, typer.Option(
              min=1, help="log.checkpoint_every_updates of the run.")] = 500,
          as_json: AsJson = False) -> None:
    """Kill actors and the learner (or their whole nodes) of real CartPole runs at random
    moments."""
    _report("chaos", seconds, kills=kills, learner_kills=learner_kills, seed=seed,
            seeds=seeds, nodes=nodes, replace_s=replace_s, checkpoint_every=checkpoint_every,
            as_json=as_json)


@app.command()
def atari100k(
    games: Annotated[str, typer.Option(help="Comma-separated ALE games.")] =
        "BattleZone,Qbert,Pong,SpaceInvaders",
    seeds: Annotated[int, typer.Option(min=1, help="Runs a game.")] = 2,
    first_seed: Annotated[int, typer.Option(min=0, help="The first seed.")] = 0,
    config: Annotated[str | None, typer.Option(
        help="qfleet config (default: configs/atari-100k.yaml, Data-Efficient Rainbow).")
    ] = None,
    parallel: Annotated[int, typer.Option(
        min=1, help="Runs at the same time (each its own local Ray; on a GPU machine "
                    "their learners share the GPU: learner.num_gpus=0.25).")] = 1,
    overrides: Annotated[list[str] | None, typer.Argument(
        help="Overrides of the config, e.g. learner.replay_ratio=8.")] = None,
    as_json: AsJson = False,
) -> None:
    """The Atari 100k benchmark per game beside DER's and BBF's published scores."""
    _report("atari100k", [g.strip() for g in games.split(",") if g.strip()],
            seeds=seeds, first_seed=first_seed, config=config,
            overrides=overrides or [], parallel=parallel, as_json=as_json)


@app.command()
def learning(
    env_id: Annotated[str, typer.Option("--env", help="Env id.")] = "CartPole-v1",
    seconds: Annotated[float, typer.Option(min=10.0, help="Wall-clock budget of each run, "
                                                         "start-up included.")] = 120.0,
    config: Annotated[str | None, typer.Option(
        help="qfleet config (default: configs/cartpole.yaml, or spaceinvaders-cpu.yaml for "
             "Atari).")] = None,
    against: Annotated[str | None, typer.Option(
        help="sb3: also run Stable-Baselines3's zoo DQN on the same budget.")] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds, each run alternating.")] = 1,
    first_seed: Annotated[int, typer.Option(
        min=0, help="The first seed (seeds first-seed, first-seed + 1, ...): a long "
                    "benchmark can go on in another session.")] = 0,
    target: Annotated[float | None, typer.Option(
        help="Stop each run at this greedy return and report the time to it.")] = None,
    points: Annotated[int, typer.Option(min=1, help="Evaluations along the budget.")] = 8,
    episodes: Annotated[int, typer.Option(min=1, help="Episodes per evaluation.")] = 16,
    plot: Annotated[str | None, typer.Option(help="Write the curves as a PNG.")] = None,
    beside: Annotated[bool, typer.Option(
        help="With --against sb3: SB3 runs at the same time as qfleet, on one core set "
             "aside for it.")] = False,
    versus: Annotated[str | None, typer.Option(
        help="Also run qfleet with these overrides (space-separated KEY=VALUE), each "
             "seed alternating with the plain run: an A/B of a config change.")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(
        help="Overrides of the qfleet config, e.g. learner.replay_ratio=8.")] = None,
    as_json: AsJson = False,
) -> None:
    """Greedy evaluations along a wall-clock budget, optionally beside SB3's zoo DQN."""
    _report("learning", seconds, env_id=env_id, config=config, against=against,
            seeds=seeds, first_seed=first_seed, target=target, points=points,
            episodes=episodes, overrides=overrides or [], plot=plot, beside=beside,
            versus=versus.split() if versus else None, as_json=as_json)
