"""How the driver names failures: `FleetFailure` ends a run for a reason, and
`describe_failure` turns a Ray error into one line that quotes the failing part's own
exception."""

from __future__ import annotations

import ray

from qfleet.runs.record import StopReason


class FleetFailure(Exception):
    """A part of the fleet failed past its budget: the run cannot go on."""

    def __init__(self, reason: StopReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def describe_failure(err: BaseException) -> str:
    """One line on why a remote call failed: the part's own exception where it raised one
    (an env's error, say), not Ray's wrapper around it."""
    if isinstance(err, ray.exceptions.RayTaskError):
        cause = err.cause if err.cause is not None else err
        while isinstance(cause, ray.exceptions.RayTaskError) and cause.cause is not None:
            cause = cause.cause
        text = str(cause).strip().splitlines()
        return f"{type(cause).__name__}: {text[0] if text else ''}".rstrip(": ")
    if isinstance(err, ray.exceptions.ActorUnavailableError):
        return "unreachable (ActorUnavailableError)"
    if isinstance(err, ray.exceptions.ActorDiedError):
        if err.actor_init_failed:  # its constructor raised: Ray's text ends with that error
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            return lines[-1] if lines else "its constructor failed (ActorDiedError)"
        if err.preempted or "its node has died" in str(err):
            return "its node died (ActorDiedError)"
        return "its process died (ActorDiedError)"
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")
