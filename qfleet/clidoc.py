"""The CLI reference, generated from the typer app itself (`qfleet.cli`), so that it
cannot drift from the commands: every command and subcommand with its help, usage,
arguments, options and defaults. The docs build renders it (docs/hooks/reference.py)."""

from __future__ import annotations

import inspect
from typing import Any

from qfleet.configref import _cell


def _help_text(text: str | None) -> str:
    """A command's help as markdown paragraphs (click's `\\b` no-rewrap marks dropped)."""
    if not text:
        return ""
    paragraphs = inspect.cleandoc(text).replace("\b\n", "").split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


def _param_name(param: Any) -> str:
    if getattr(param, "param_type_name", "") == "argument":
        name = (param.name or "").upper()
        return f"{name}..." if param.nargs == -1 else name
    names = ", ".join(param.opts)
    if param.secondary_opts:
        names += " / " + ", ".join(param.secondary_opts)
    return names if getattr(param, "is_flag", False) else f"{names} {_value_type(param)}"


def _value_type(param: Any) -> str:
    """What an option's value is: `<int>` (typer's own commands, or click's types)."""
    try:
        name = param.bare_type()  # typer >= 0.2x: its own click, no `type`
    except Exception:
        name = getattr(getattr(param, "type", None), "name", "value")
    return f"<{name}>"


def _param_default(param: Any) -> str:
    if param.required:
        return "required"
    default = param.default
    if callable(default) or default is None or default == ():
        return ""
    if getattr(param, "is_flag", False):
        if param.secondary_opts:
            return param.opts[0] if default else param.secondary_opts[0]
        return "on" if default else "off"
    return str(default)


def _usage(command: Any, ctx: Any, path: str) -> str | None:
    try:
        return " ".join([path, *command.collect_usage_pieces(ctx)])
    except Exception:  # click's and typer's internals differ between versions
        return None


def _command_markdown(command: Any, path: list[str], parent: Any, lines: list[str]) -> None:
    ctx = command.context_class(command, info_name=path[-1], parent=parent)
    depth = len(path) - 1
    if depth:
        lines += [f"{'#' * min(depth + 1, 4)} `{' '.join(path)}`", ""]
    if text := _help_text(command.help):
        lines += [text, ""]
    if usage := _usage(command, ctx, " ".join(path)):
        lines += [f"Usage: `{usage}`", ""]
    params = [p for p in command.params if not getattr(p, "hidden", False)]
    if params:
        lines += ["| argument / option | default | meaning |", "|---|---|---|"]
        for p in params:
            default = _param_default(p)
            if default and default != "required":
                default = f"`{default}`"
            lines.append(f"| `{_cell(_param_name(p))}` | {_cell(default)} | "
                         f"{_cell(' '.join((getattr(p, 'help', None) or '').split()))} |")
        lines.append("")
    subcommands = getattr(command, "commands", None)
    if isinstance(subcommands, dict):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not getattr(sub, "hidden", False):
                _command_markdown(sub, [*path, name], ctx, lines)


def cli_markdown(app: Any = None) -> str:
    """The CLI reference page's body: every command and subcommand of the `qfleet` typer
    app (or of `app`), with its help, usage, arguments and options."""
    import typer

    if app is None:
        from qfleet.cli import app
    lines: list[str] = []
    _command_markdown(typer.main.get_command(app), ["qfleet"], None, lines)
    lines.append("Every command also takes `--help`.")
    return "\n".join(lines).rstrip() + "\n"
