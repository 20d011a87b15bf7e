"""The `qfleet` command: train, evaluate, bench.

Every user error (config, env id, checkpoint, resources) ends as one line on stderr and
exit code 2, before Ray starts whenever it can be known then. A run ends with one line
saying why and its exit code: 0 done, 1 failed, 2 bad input, 130 Ctrl-C, 143 SIGTERM.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from qfleet.bench.cli import app as bench_app
from qfleet.config import ConfigError
from qfleet.errors import QfleetError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Distributed DQN training on Ray.")
app.add_typer(bench_app, name="bench")

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    print(f"qfleet: error: {message}", file=sys.stderr)
    return typer.Exit(code)


def _split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """`CONFIG k=v ...`: the config file is the one argument without `=`."""
    paths = [a for a in args if "=" not in a]
    if len(paths) > 1:
        raise ConfigError(f"expected one config file, got {len(paths)}: {' '.join(paths)}")
    return (paths[0] if paths else None), [a for a in args if "=" in a]


@app.command()
def train(
    args: Annotated[list[str] | None, typer.Argument(
        help="CONFIG.yaml followed by overrides such as learner.lr=3e-4 (what a key means: "
             "qfleet config KEY)")] = None,
    run_dir: Annotated[str | None, typer.Option(
        help="Where logs and checkpoints go: a directory or a storage URI (s3://, gs://, "
             "file://).")] = None,
    address: Annotated[str | None, typer.Option(
        help="Ray cluster address (default: RAY_ADDRESS, else a local Ray).")] = None,
    resume: Annotated[str | None, typer.Option(
        help="Continue a run from its newest checkpoint.")] = None,
    if_exists: Annotated[str, typer.Option(
        help="When --run-dir already holds a run: fail (never write over it) or resume "
             "(continue from its newest checkpoint; succeed at once if it ended on its "
             "target or budget), as a retried job should.")] = "fail",
) -> None:
    """Train a DQN fleet: actors on CPUs, one learner, live console and TensorBoard."""
    from qfleet import api
    from qfleet.runs.record import StopReason

    try:
        path, overrides = _split_args(args or [])
        summary = api.train(path, overrides, run_dir=run_dir, address=address, resume=resume,
                            if_exists=if_exists)
    except QfleetError as err:
        raise _fail(str(err)) from None
    except OSError as err:  # the run directory cannot be written (summary, config)
        raise _fail(f"cannot write the run directory: {err}", EXIT_FAILED) from None
    except KeyboardInterrupt:
        raise _fail("interrupted: exiting without a final checkpoint",
                    EXIT_INTERRUPTED) from None
    print(json.dumps(summary))
    if summary.get("already_ended"):
        print(f"qfleet: done: the run in {run_dir} already ended "
              f"({summary.get('stop_message', summary['stopped_by'])}); nothing to do")
        return
    reason = StopReason(summary["stopped_by"])
    if reason.exit_code == 0:
        print(f"qfleet: done: {summary['stop_message']}")
        return
    kind = "error" if reason.exit_code == EXIT_FAILED else "stopped"
    print(f"qfleet: {kind}: {summary['stop_message']}", file=sys.stderr)
    raise typer.Exit(reason.exit_code)


@app.command()
def tune(
    args: Annotated[list[str], typer.Argument(
        help="CONFIG.yaml SWEEP.yaml, then overrides such as stop.time_s=120")],
    trials: Annotated[int, typer.Option(min=1, help="Trials to sample.")] = 4,
    scheduler: Annotated[str, typer.Option(
        help="fifo (run every trial to its end), asha (stop weak trials early) or pbt "
             "(Population Based Training over qfleet's checkpoints).")] = "fifo",
    max_concurrent: Annotated[int | None, typer.Option(
        min=1, help="Trials running at once (default: as many as the cluster holds; pbt: "
                    "the whole population).")] = None,
    perturb_every: Annotated[int, typer.Option(
        min=1, help="pbt: evaluations between a trial's exploit/explore steps.")] = 4,
    run_dir: Annotated[str | None, typer.Option(
        help="The sweep directory: a directory or a storage URI (default: runs/sweep-...).")
    ] = None,
    address: Annotated[str | None, typer.Option(
        help="Ray cluster address (default: RAY_ADDRESS, else a local Ray).")] = None,
    resume: Annotated[bool, typer.Option(
        help="Continue the interrupted sweep in --run-dir.")] = False,
) -> None:
    """Search hyperparameters with Ray Tune: each trial a whole fleet in its own placement
    group; a ranked table, trials.csv and best.yaml at the end."""
    from rich.console import Console

    from qfleet import api
    from qfleet.sweep.results import table

    try:
        paths = [a for a in args if "=" not in a]
        if len(paths) != 2:
            raise ConfigError(f"expected CONFIG and SWEEP files, got {len(paths)}: "
                              f"{' '.join(paths) or 'none'}")
        config, sweep = paths
        out = api.tune(config, sweep, [a for a in args if "=" in a], trials=trials,
                       scheduler=scheduler, max_concurrent=max_concurrent,
                       perturb_every=perturb_every, run_dir=run_dir, address=address,
                       resume=resume)
    except QfleetError as err:
        raise _fail(str(err)) from None
    except OSError as err:
        raise _fail(f"cannot write the sweep directory: {err}", EXIT_FAILED) from None
    except KeyboardInterrupt:
        raise _fail("interrupted", EXIT_INTERRUPTED) from None
    sweep_dir, best = out["sweep_dir"], out["best"]
    # Not a terminal (a log file, CI): wide enough for the swept keys' columns.
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table(out["trials"], out["searched"],
                        f"sweep {sweep_dir}: trials by greedy return"))
    print(json.dumps({k: out[k] for k in ("sweep_dir", "best", "errors", "interrupted")}))
    if out["interrupted"]:
        print(f"qfleet: stopped: sweep interrupted; continue it with --run-dir {sweep_dir} "
              "--resume", file=sys.stderr)
        raise typer.Exit(EXIT_INTERRUPTED)
    if best is None:
        print("qfleet: error: no trial reached a greedy evaluation"
              + (f" ({out['errors']} failed; their errors are in the table)"
                 if out["errors"] else ""), file=sys.stderr)
        raise typer.Exit(EXIT_FAILED)
    print(f"qfleet: done: best trial {best['trial']} (greedy return "
          f"{best['eval_return_mean']:.1f}); its config: {best['config']}")


@app.command()
def evaluate(
    path: Annotated[str, typer.Argument(
        help="A checkpoint file, a run directory, or a run's storage URI.")],
    episodes: Annotated[int, typer.Option(min=1, help="Episodes to run.")] = 10,
    epsilon: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="Random-action probability (default: the run's "
                               "eval.epsilon, 0.001 unless set).")] = None,
    protocol: Annotated[str | None, typer.Option(
        help="Atari protocol: sticky (Machado et al. 2018) or noop30 (the DQN-era tables); "
             "default: the run's eval.protocol.")] = None,
    video: Annotated[str | None, typer.Option(
        help="Write one mp4 per episode into this directory.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Run a trained network (near-)greedily; print each episode, mean ± standard error, and
    the human-normalized score on Atari-57 games."""
    from qfleet import api

    try:
        result = api.evaluate(path, episodes, epsilon, protocol=protocol, video_dir=video)
    except QfleetError as err:
        raise _fail(str(err)) from None
    except OSError as err:
        raise _fail(f"cannot write the videos: {err}") from None
    if as_json:
        print(json.dumps(result))
        return
    from rich.console import Console
    from rich.table import Table

    setting = f"ε={result['epsilon']:g}"
    if result["protocol"]:
        setting = f"protocol {result['protocol']}, {setting}"
    table = Table(title=f"{result['env_id']} — {result['checkpoint']} ({setting})")
    for col in ("episode", "steps", "frames", "return", "outcome"):
        table.add_column(col, justify="right")
    for i, e in enumerate(result["episodes"], 1):
        table.add_row(str(i), f"{e['length']:,}", f"{e['frames']:,}", f"{e['ret']:.2f}",
                      "terminated" if e["terminated"] else "truncated")
    console = Console()
    console.print(table)
    line = f"mean return {result['return_mean']:.2f}"
    if result["return_sem"] is not None:
        line += (f" ± {result['return_sem']:.2f} (standard error; std "
                 f"{result['return_std']:.2f})")
    line += f" over {len(result['episodes'])} episodes"
    if result["human_normalized_score_mean"] is not None:
        line += f"; human-normalized {result['human_normalized_score_mean']:.3f}"
    console.print(line)
    for video_path in result.get("videos", []):
        console.print(f"video: {video_path}")


@app.command("config")
def config_reference(
    key: Annotated[str | None, typer.Argument(
        help="A dotted key such as learner.lr, or a section such as learner; none: every "
             "key.")] = None,
) -> None:
    """What config keys mean, with their types and defaults: the reference generated from
    the config schema (qfleet/config.py), so it always matches this version."""
    from qfleet import configref

    try:
        text = configref.describe(key) if key else configref.markdown()
    except ConfigError as err:
        raise _fail(str(err)) from None
    print(text.rstrip("\n"))


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
