"""The `qfleet` command: train, evaluate, bench.

Every user error (config, env id, checkpoint, resources) ends as one line on stderr and
exit code 2, before Ray starts whenever it can be known then. A run ends with one line
saying why and its exit code: 0 done, 1 failed, 2 bad input, 130 Ctrl-C, 143 SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from qfleet.bench.cli import app as bench_app
from qfleet.checkpoint import CheckpointError, find_checkpoint, load_checkpoint, load_replay
from qfleet.config import Config, ConfigError, config_from_dict, load_config
from qfleet.storage import RunStorage

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Distributed DQN training on Ray.")
app.add_typer(bench_app, name="bench")

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    print(f"qfleet: error: {message}", file=sys.stderr)
    return typer.Exit(code)


def _default_run_dir(config: Config) -> Path:
    name = re.sub(r"[^A-Za-z0-9]+", "-", config.env.id).strip("-").lower()
    return Path("runs") / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def is_local(address: str | None) -> bool:
    """No cluster named (`--address` or `RAY_ADDRESS`): the run starts its own local Ray."""
    return not (address or os.environ.get("RAY_ADDRESS"))


def local_token_auth(address: str | None) -> None:
    """A local Ray with token auth said explicitly (Ray 2.60 turns it on for local clusters
    anyway, then warns that it did). Must run before `ray` is imported: Ray reads the mode
    once, and the driver and the cluster it starts must agree."""
    if is_local(address):
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def _split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """`CONFIG k=v ...`: the config file is the one argument without `=`."""
    paths = [a for a in args if "=" not in a]
    if len(paths) > 1:
        raise ConfigError(f"expected one config file, got {len(paths)}: {' '.join(paths)}")
    return (paths[0] if paths else None), [a for a in args if "=" in a]


def _prepare_train(args: list[str], run_dir: str | None, resume: str | None,
                   address: str | None):
    """Everything that can be refused before Ray starts: config, env, checkpoint, memory."""
    from qfleet.envs import env_spec
    from qfleet.learner.learner import check_replay_fits, pick_device

    path, overrides = _split_args(args)
    resume_state = None
    storage = RunStorage(run_dir) if run_dir is not None else None
    if resume is not None:
        source = RunStorage(resume)
        source.fetch()
        local = source.local
        if not (local / "config.yaml").is_file():
            raise CheckpointError(f"--resume {resume!r} is not a qfleet run directory "
                                  "(no config.yaml)")
        newest = find_checkpoint(local)
        resume_state = load_checkpoint(newest)
        resume_state["source"] = str(newest)
        resume_state["replay"] = load_replay(local, int(resume_state["counters"]["updates"]))
        config = load_config(path or local / "config.yaml", overrides)
        storage = storage or source
    else:
        if path is None:
            raise ConfigError("missing CONFIG: give a YAML config file (see configs/)")
        config = load_config(path, overrides)
    spec = env_spec(config.env)
    net = _build_network(config, spec)
    if resume_state is not None:
        _check_compatible(resume_state, config, net)
    if is_local(address):
        # A local run: the machine's cores and the learner's memory are knowable now.
        cores = os.cpu_count() or 1
        if config.actors.num_cpus > cores:
            raise ConfigError(f"actors.num_cpus: {config.actors.num_cpus:g} CPUs per actor, "
                              f"but this machine has {cores}")
        check_replay_fits(config, spec, pick_device(config.learner.device))
    return config, spec, storage or RunStorage(_default_run_dir(config)), resume_state


def _build_network(config: Config, spec):
    """The config's Q-network for this env, or the config error that prevents it."""
    from qfleet.networks import build_q_network

    try:
        return build_q_network(config.network, spec)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _check_compatible(state: dict, config: Config, net) -> None:
    try:
        net.load_state_dict(state["network"])
    except (RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()[0][:160]
        raise CheckpointError(f"checkpoint does not match env {config.env.id!r} and this "
                              f"network: {first}") from None


@app.command()
def train(
    args: Annotated[list[str] | None, typer.Argument(
        help="CONFIG.yaml followed by overrides such as learner.lr=3e-4")] = None,
    run_dir: Annotated[str | None, typer.Option(
        help="Where logs and checkpoints go: a directory or a storage URI (s3://, gs://, "
             "file://).")] = None,
    address: Annotated[str | None, typer.Option(
        help="Ray cluster address (default: RAY_ADDRESS, else a local Ray).")] = None,
    resume: Annotated[str | None, typer.Option(
        help="Continue a run from its newest checkpoint.")] = None,
) -> None:
    """Train a DQN fleet: actors on CPUs, one learner, live console and TensorBoard."""
    start = time.monotonic()
    from qfleet.learner.learner import LearnerError

    try:
        config, spec, storage, resume_state = _prepare_train(args or [], run_dir, resume,
                                                              address)
    except (ConfigError, CheckpointError, LearnerError) as err:
        raise _fail(str(err)) from None

    local_token_auth(address)  # before Ray is imported
    import ray

    from qfleet.driver.fleet import Fleet
    from qfleet.driver.placement import connect_ray
    from qfleet.driver.record import StopReason

    count = config.actors.num_actors
    needed = (count if isinstance(count, int) else 1) * config.actors.num_cpus + 1
    try:
        connect_ray(address, needed)
        summary = Fleet(config, spec, storage, command_start=start,
                        resume=resume_state).run()
    except (ConfigError, LearnerError) as err:  # what only the cluster could tell apart
        raise _fail(str(err)) from None
    except OSError as err:  # the run directory cannot be written (summary, config)
        raise _fail(f"cannot write the run directory: {err}", EXIT_FAILED) from None
    except KeyboardInterrupt:
        raise _fail("interrupted: exiting without a final checkpoint",
                    EXIT_INTERRUPTED) from None
    finally:
        if ray.is_initialized():
            ray.shutdown()
    print(json.dumps(summary))
    reason = StopReason(summary["stopped_by"])
    if reason.exit_code == 0:
        print(f"qfleet: done: {summary['stop_message']}")
        return
    kind = "error" if reason.exit_code == EXIT_FAILED else "stopped"
    print(f"qfleet: {kind}: {summary['stop_message']}", file=sys.stderr)
    raise typer.Exit(reason.exit_code)


@app.command()
def evaluate(
    path: Annotated[str, typer.Argument(
        help="A checkpoint file, a run directory, or a run's storage URI.")],
    episodes: Annotated[int, typer.Option(min=1, help="Episodes to run.")] = 10,
    epsilon: Annotated[float, typer.Option(min=0.0, max=1.0,
                                           help="Random-action probability.")] = 0.001,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Run a trained network (near-)greedily and print each episode and mean ± std."""
    from qfleet.envs import env_spec
    from qfleet.evaluate import Evaluator

    try:
        source = RunStorage(path)
        source.fetch()
        file = find_checkpoint(source.local)
        state = load_checkpoint(file)
        config = config_from_dict(state["config"])
        spec = env_spec(config.env)
        _check_compatible(state, config, _build_network(config, spec))
    except (ConfigError, CheckpointError) as err:
        raise _fail(str(err)) from None
    results = Evaluator(config, spec).evaluate(state["network"], episodes, epsilon)
    returns = [e.ret for e in results]
    mean, std = statistics.fmean(returns), statistics.pstdev(returns)
    if as_json:
        print(json.dumps({"checkpoint": str(file), "episodes": [e._asdict() for e in results],
                          "return_mean": mean, "return_std": std}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{config.env.id} — {file}")
    for col in ("episode", "steps", "return", "outcome"):
        table.add_column(col, justify="right")
    for i, e in enumerate(results, 1):
        table.add_row(str(i), f"{e.length:,}", f"{e.ret:.2f}",
                      "terminated" if e.terminated else "truncated")
    console = Console()
    console.print(table)
    console.print(f"mean return {mean:.2f} ± {std:.2f} over {len(results)} episodes")


def main() -> None:
    """The `qfleet` entry point: a usage error is one line and exit code 2, as every other
    bad input (click's multi-line usage box is not)."""
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as err:
        format_message = getattr(err, "format_message", None)  # names the option, if any
        message = format_message() if format_message else str(err)
        if "\n" in message:  # no arguments: the help, as asked for
            print(message, file=sys.stderr)
        else:
            print(f"qfleet: error: {message}", file=sys.stderr)
        code = EXIT_USAGE
    except typer.Abort:  # Ctrl-C outside a run
        code = EXIT_INTERRUPTED
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
