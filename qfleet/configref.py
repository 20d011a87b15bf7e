"""The config and CLI references, generated from the code so that they cannot drift.

`fields()` walks the config schema (`qfleet.config.Config`): every key's dotted name, type,
default, and the docstring under it (pydantic's `use_attribute_docstrings`). `markdown()`
and `describe()` render them for the docs and for `qfleet config [KEY]`; `cli_markdown()`
walks the command that typer builds from `qfleet.cli`. The docs call both from a MkDocs
hook (`docs/hooks/reference.py`), so a changed default or docstring shows at the next build.
"""

from __future__ import annotations

import difflib
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from qfleet.config import Config, ConfigError

Model = type[BaseModel]

_NO_DEFAULT = object()


@dataclass(frozen=True)
class FieldDoc:
    """One config key, as the reference shows it."""

    key: str
    """Dotted, as an override writes it: `learner.lr`."""
    type: str
    """The type as people read it: `float, > 0, ≤ 1`; `int | auto`; `list[int]`."""
    default: str
    """As YAML writes it (`null` for none), or `required`."""
    doc: str
    """The key's docstring, on one line."""
    section_default: str | None = None
    """The default when the key's section is written out but the key left out, where that
    differs from `default` (a section whose own default sets keys its class leaves unset,
    as `stop`'s does)."""


@dataclass(frozen=True)
class GroupDoc:
    """A section: a field whose type is a model of its own."""

    key: str
    summary: str
    """The section field's docstring: one line."""
    doc: str
    """The section model's docstring (the summary where it has none)."""
    model: Model


# -- walking the schema -----------------------------------------------------------------------
def _one_line(text: str | None) -> str:
    return " ".join(inspect.cleandoc(text).split()) if text else ""


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _description(model: Model, name: str) -> str:
    """The field's docstring; a subclass that redefines a field without one keeps its base's."""
    for cls in model.__mro__:
        if not issubclass(cls, BaseModel) or cls is BaseModel:
            break
        info = cls.model_fields.get(name)
        if info is not None and info.description:
            return _one_line(info.description)
    return ""


def _class_doc(model: Model) -> str:
    """The model's own docstring (or its nearest schema base's), never pydantic's."""
    for cls in model.__mro__:
        if not issubclass(cls, BaseModel) or cls is BaseModel:
            break
        if doc := cls.__dict__.get("__doc__"):
            return _one_line(doc)
    return ""


def _default(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return _NO_DEFAULT if info.default is PydanticUndefined else info.default


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin in (tuple, list, set, frozenset):  # YAML has lists
        if origin is tuple and not (len(args) == 2 and args[1] is ...):  # fixed length
            return f"list[{', '.join(_type_name(a) for a in args)}]"
        return f"list[{_type_name(args[0] if args else Any)}]"
    if origin is dict:
        key, value = args or (Any, Any)
        return f"dict[{_type_name(key)}, {_type_name(value)}]"
    return getattr(annotation, "__name__", str(annotation))


_BOUNDS = ((annotated_types.Gt, "gt", ">"), (annotated_types.Ge, "ge", "≥"),
           (annotated_types.Lt, "lt", "<"), (annotated_types.Le, "le", "≤"))


def _type_text(info: FieldInfo) -> str:
    bounds = [f"{sign} {_yaml(getattr(m, attr))}" for m in info.metadata
              for kind, attr, sign in _BOUNDS if isinstance(m, kind)]
    return ", ".join([_type_name(info.annotation), *bounds])


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _yaml(value: Any) -> str:
    """`value` as a YAML file or an override would write it."""
    value = _plain(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return text.removesuffix(".0")
    if isinstance(value, int):
        return str(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, allow_unicode=True)
    return text.strip().removesuffix("...").strip()


def _walk(model: Model, prefix: str, instance: Any) -> typing.Iterator[FieldDoc | GroupDoc]:
    """Groups and keys under `model`, depth first; `instance`: the model's default value
    where its parent gives one (its values are the defaults a config without it gets)."""
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        own = _default(info)
        value = own if instance is None else getattr(instance, name, own)
        if _is_model(info.annotation):
            summary = _description(model, name)
            doc = _class_doc(info.annotation) or summary  # type: ignore[arg-type]
            yield GroupDoc(key, summary, doc, info.annotation)  # type: ignore[arg-type]
            yield from _walk(info.annotation, f"{key}.",  # type: ignore[arg-type]
                             None if value is _NO_DEFAULT else value)
            continue
        default = "required" if value is _NO_DEFAULT else _yaml(value)
        in_section = "required" if own is _NO_DEFAULT else _yaml(own)
        yield FieldDoc(key, _type_text(info), default, _description(model, name),
                       in_section if in_section != default else None)


def fields(model: Model = Config) -> list[FieldDoc]:
    """Every key of `model`'s schema (not the sections themselves), in schema order."""
    return [d for d in _walk(model, "", None) if isinstance(d, FieldDoc)]


def groups(model: Model = Config) -> list[GroupDoc]:
    """Every section of `model`'s schema, nested ones included."""
    return [d for d in _walk(model, "", None) if isinstance(d, GroupDoc)]


# -- the config reference -------------------------------------------------------------------
INTRO = """\
A config is a YAML file of the sections below; every key is optional and has the default
shown. Override any key after the config file with its dotted name,
`qfleet train CONFIG.yaml section.key=value …` (without a file, the overrides apply to the
defaults; `qfleet tune CONFIG.yaml SWEEP.yaml section.key=value …` takes them too). The
value is read as YAML: `network.hidden=[256,256]`, `learner.grad_clip=null`,
`actors.num_actors=auto`; a key inside a mapping goes one level deeper:
`env.kwargs.render_mode=rgb_array`. A misspelled key or a value of the wrong type stops the
run before it starts, with one line naming the key. `qfleet config KEY` prints one key's
entry, `qfleet config SECTION` a whole section."""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _default_cell(f: FieldDoc) -> str:
    text = f"`{f.default}`" if f.default != "required" else "required"
    if f.section_default is not None:
        section = f.key.rsplit(".", 1)[0]
        text += f" (`{f.section_default}` in a `{section}` section that leaves it out)"
    return _cell(text)


def _table(keys: list[FieldDoc]) -> list[str]:
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for f in keys:
        meaning = f"{f.doc} *Type:* {f.type}." if f.doc else f"*Type:* {f.type}."
        rows.append(f"| `{f.key}` | {_default_cell(f)} | {_cell(meaning)} |")
    return rows


def markdown(model: Model = Config) -> str:
    """The config reference page's body: the intro, then one section per top-level group
    with its docstring and a table of its keys (nested groups' keys in their parent's)."""
    keys = fields(model)
    lines = [INTRO, ""]
    top = [f for f in keys if "." not in f.key]
    if top:
        lines += ["## Top-level keys", "", *_table(top), ""]
    for g in groups(model):
        if "." in g.key:
            continue
        lines += [f"## `{g.key}`", ""]
        if g.doc:
            lines += [g.doc, ""]
        lines += [*_table([f for f in keys if f.key.startswith(f"{g.key}.")]), ""]
    return "\n".join(lines).rstrip() + "\n"


def _wrap(text: str, indent: str = "  ") -> str:
    return textwrap.fill(text, width=88, initial_indent=indent, subsequent_indent=indent)


def _describe_field(f: FieldDoc) -> str:
    default = f.default
    if f.section_default is not None:
        default += f" ({f.section_default} in a section that leaves it out)"
    head = f"{f.key}: {f.type}; default {default}"
    return f"{head}\n{_wrap(f.doc)}" if f.doc else head


def _unknown(key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    if not close:  # a bare name (`lr`) or a name in the wrong section
        tail = key.rsplit(".", 1)[-1]
        close = [k for k in known if k.rsplit(".", 1)[-1] == tail][:3]
    if not close and "." in key:  # a real section: its nearest keys, however far
        section = key.rsplit(".", 1)[0]
        inside = [k for k in known if k.startswith(f"{section}.")]
        close = difflib.get_close_matches(key, inside, n=3, cutoff=0.0)
    hint = (f"; did you mean {', '.join(close)}?" if close
            else "; `qfleet config` lists every key")
    return ConfigError(f"unknown config key {key!r}{hint}")


def describe(key: str, model: Model = Config) -> str:
    """The meaning, type and default of one dotted key, or of every key of a section; an
    unknown key is a `ConfigError` naming the closest valid ones."""
    key = key.strip()
    by_key = {f.key: f for f in fields(model)}
    sections = {g.key: g for g in groups(model)}
    if key in by_key:
        return _describe_field(by_key[key])
    if key in sections:
        g = sections[key]
        doc = g.doc
        inner = [_describe_field(f) for f in by_key.values() if f.key.startswith(f"{key}.")]
        return "\n\n".join([f"{key}: a section\n{_wrap(doc)}" if doc else f"{key}: a section",
                            *inner])
    mapping = next((k for k, f in by_key.items()
                    if key.startswith(f"{k}.") and f.type.startswith("dict[")), None)
    if mapping is not None:  # `env.kwargs.render_mode`: an entry of a mapping key
        return f"{key}: an entry of the mapping {mapping}\n\n{_describe_field(by_key[mapping])}"
    # `learner.lrr` is a key misspelled, not a section: suggest sections only for a bare name
    raise _unknown(key, [*by_key, *(k for k in sections if "." not in key or "." in k)])


# -- the CLI reference ----------------------------------------------------------------------
