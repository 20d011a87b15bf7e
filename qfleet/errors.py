"""What can go wrong that the user can fix, typed by what failed.

Each is one line for a person: the CLI prints it as `qfleet: error: …` and exits 2, the
Python API raises it. They are plain picklable exceptions, so a worker's error reaches the
driver across Ray as its own type (`RayTaskError.cause`), never recognised by its text.
"""

from __future__ import annotations


class QfleetError(ValueError):
    """Bad input: a config, a checkpoint, a cluster or an env that cannot work as given."""


class ConfigError(QfleetError):
    """A config file, override or command-line option is invalid."""


class CheckpointError(QfleetError):
    """A checkpoint or run directory cannot be read or continued."""


class RunExistsError(CheckpointError):
    """`--run-dir` already holds a run that this command would write over."""


class PlacementError(QfleetError):
    """The cluster can never host the fleet as configured (CPUs, GPUs, an actor's share)."""


class LearnerError(QfleetError):
    """The learner cannot start as configured on its node (no GPU visible, replay too big
    for its memory)."""


class EnvError(ConfigError):
    """The env a config names cannot be made or does not fit qfleet (an unknown id, a
    module that does not import, an action space DQN cannot act in)."""
