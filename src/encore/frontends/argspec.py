"""Command-line options derived from the request dataclasses, so the CLI and the Python API cannot drift.

`add_dataclass_options` walks `dataclasses.fields` of a request dataclass and adds one option per field
(type, choices, default shown in the help, help text taken from the field's docstring in the class source).
Each option stores under its dotted request path (``text.bpm``); `collect_request_dict` rebuilds the nested
JSON-able dict that `encore.pipeline.request.request_from_dict` validates. Options the user did not give are
absent, so defaults live only in the dataclasses.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import itertools
import json
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

SECONDS_SUFFIX = "_s"

# Short or singular spellings users expect, keyed by the dotted request path.
ALIASES: dict[str, tuple[str, ...]] = {
    "diffusion.num_steps": ("--steps",),
    "seeds": ("--seed",),
}
# Paths whose derived flag name reads badly; the replacement is used instead.
RENAMES: dict[str, str] = {
    "planner.think": "--think",
}


@dataclass(frozen=True)
class OptionSpec:
    """One command-line option and the request field it fills."""

    path: str
    """Dotted request path, e.g. ``text.bpm``."""
    flags: tuple[str, ...]
    kind: str
    """How the parsed value becomes JSON: ``scalar``, ``list``, ``lora``, ``codes`` or ``positional``."""


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under each field of a dataclass (``x: int = 1`` followed by ``\"\"\"doc\"\"\"``)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # source not shipped (e.g. zipped install): no help text, still usable
            continue
        body = ast.parse(source).body[0]
        if not isinstance(body, ast.ClassDef):
            continue
        stmts = body.body
        for stmt, nxt in itertools.pairwise(stmts):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def flag_name(name: str, prefix: str = "") -> str:
    """``duration_s`` -> ``--duration`` (the unit goes to the metavar), ``num_steps`` -> ``--num-steps``."""
    name = name.removesuffix(SECONDS_SUFFIX)
    return "--" + prefix + name.replace("_", "-")


def strip_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _default_text(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if value is None:
        return "default: unset"
    if isinstance(value, tuple):
        return "default: " + (" ".join(str(v) for v in value) if value else "none")
    if isinstance(value, str) and (not value or "\n" in value):
        return "default: " + json.dumps(value, ensure_ascii=False)
    return f"default: {value}"


def _help(doc: str, f: dataclasses.Field[Any], extra: str = "") -> str:
    # argparse treats % as a format character in help strings.
    text = " ".join(p for p in (doc, extra, f"({_default_text(f)})") if p)
    return text.replace("%", "%%")


def add_dataclass_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    path: str = "",
    *,
    prefix: str = "",
    skip: frozenset[str] = frozenset(),
    positional: frozenset[str] = frozenset(),
) -> list[OptionSpec]:
    """Add one option per field of dataclass `cls` (recursing into nested dataclasses).

    Args:
        parser: parser or argument group to add to.
        cls: the request dataclass.
        path: dotted path of `cls` inside `GenerationRequest` ("" for the root).
        prefix: prepended to flag names (``lm-`` for planner options).
        skip: dotted paths not to expose (handled elsewhere, e.g. ``task``).
        positional: dotted paths exposed as positional arguments.

    Returns:
        The specs of every option added, used by `collect_request_dict`.

    Raises:
        TypeError: a field has a type this walker does not know; add support here rather than
            hand-writing the option, so the CLI keeps deriving from the dataclass.
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    specs: list[OptionSpec] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        full = f"{path}.{f.name}" if path else f.name
        if full in skip:
            continue
        tp, _ = strip_optional(hints[f.name])
        doc = docs.get(f.name, "")
        if dataclasses.is_dataclass(tp):
            # Nested option group: planner options get an lm- prefix so "--temperature" is never ambiguous.
            sub_prefix = prefix + ("lm-" if f.name == "planner" else "")
            specs += add_dataclass_options(parser, tp, full, prefix=sub_prefix, skip=skip, positional=positional)
            continue
        specs.append(_add_field(parser, f, tp, full, doc, prefix, full in positional))
    return specs


def _add_field(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    f: dataclasses.Field[Any],
    tp: Any,
    full: str,
    doc: str,
    prefix: str,
    is_positional: bool,
) -> OptionSpec:
    flags = (RENAMES.get(full) or flag_name(f.name, prefix), *ALIASES.get(full, ()))
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    metavar = "SECONDS" if f.name.endswith(SECONDS_SUFFIX) else f.name.upper()
    common: dict[str, Any] = {"dest": full, "default": argparse.SUPPRESS}
    if is_positional:
        parser.add_argument(full, metavar=f.name.upper(), help=_help(doc, f).replace(" (required)", ""),
                            type=_scalar_type(tp, full))
        return OptionSpec(full, (f.name.upper(),), "positional")
    if tp is bool:
        parser.add_argument(*flags, action=argparse.BooleanOptionalAction, help=_help(doc, f), **common)
        return OptionSpec(full, flags, "scalar")
    if origin is Literal:
        parser.add_argument(*flags, choices=list(args), help=_help(doc, f), **common)
        return OptionSpec(full, flags, "scalar")
    if full == "audio_codes":  # long: also as the planner's token text, or from a file
        parser.add_argument(*flags, nargs="+", metavar="CODES",
                            help=_help(doc, f, "Integers (space- or comma-separated), <|audio_code_N|> tokens, or "
                                                "@FILE holding either."), **common)  # fmt: skip
        return OptionSpec(full, flags, "codes")
    if origin is tuple:
        item = args[0]
        if dataclasses.is_dataclass(item) and item.__name__ == "LoraSpec":
            parser.add_argument(*flags_for_lora(prefix), action="append", metavar="PATH[:SCALE]",
                                help=_help(doc or "LoRA adapter to apply (repeatable).", f), **common)
            return OptionSpec(full, flags_for_lora(prefix), "lora")
        if len(args) == 2 and args[1] is Ellipsis:
            nargs: int | str = "+"
            extra = "Several values may be given, space- or comma-separated."
        else:
            nargs, extra = len(args), ""
        item_tp, _ = strip_optional(item)
        item_choices = list(typing.get_args(item_tp)) if typing.get_origin(item_tp) is Literal else None
        parser.add_argument(*flags, nargs=nargs, metavar=metavar if metavar == "SECONDS" else f.name.rstrip("s").upper(),
                            type=_list_item_type(item_tp, full, item_choices),
                            help=_help(doc, f, extra + (f" Choices: {', '.join(item_choices)}." if item_choices else "")),
                            **common)
        return OptionSpec(full, flags, "list")
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    parser.add_argument(*flags, type=_scalar_type(tp, full), metavar=metavar, required=required,
                        help=_help(doc, f), **common)
    return OptionSpec(full, flags, "scalar")


def flags_for_lora(prefix: str = "") -> tuple[str, ...]:
    return ("--" + prefix + "lora",)


def _scalar_type(tp: Any, full: str) -> Any:
    if tp in (str, int, float):
        return tp
    raise TypeError(f"CLI option for {full}: unsupported type {tp!r}; teach frontends/argspec.py about it")


class _ListItem:
    """argparse `type=` for list items; accepts "a,b" so `--tracks drums,bass` works like `--tracks drums bass`."""

    def __init__(self, tp: Any, full: str, choices: list[str] | None) -> None:
        self.tp, self.full, self.choices = tp, full, choices
        self.__name__ = getattr(tp, "__name__", "value")

    def __call__(self, text: str) -> list[Any]:
        out = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            if self.choices is not None and part not in self.choices:
                raise argparse.ArgumentTypeError(f"invalid choice {part!r} (choose from {', '.join(self.choices)})")
            out.append(part if self.choices is not None else self.tp(part))
        return out


def _list_item_type(tp: Any, full: str, choices: list[str] | None) -> _ListItem:
    if choices is None and tp not in (str, int, float):
        raise TypeError(f"CLI option for {full}: unsupported list item type {tp!r}")
    return _ListItem(tp, full, choices)


def _parse_lora(text: str) -> dict[str, Any]:
    path, sep, scale = text.rpartition(":")
    if sep and path and _is_number(scale):
        return {"path": path, "scale": float(scale)}
    return {"path": text}


def _parse_codes(raw: list[str]) -> tuple[int, ...]:
    """`--audio-codes` values: code text, or @FILE (read here) holding it."""
    from pathlib import Path

    from encore.errors import InvalidRequest
    from encore.pipeline.request import parse_audio_codes

    texts = []
    for value in raw:
        if value.startswith("@"):
            try:
                value = Path(value[1:]).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise InvalidRequest("audio_codes", f"cannot read {value[1:]}: {exc}") from None
        texts.append(value)
    return parse_audio_codes(" ".join(texts))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def collect_request_dict(namespace: argparse.Namespace, specs: list[OptionSpec]) -> dict[str, Any]:
    """Rebuild the nested request dict from parsed options; only options the user gave appear."""
    values = vars(namespace)
    out: dict[str, Any] = {}
    for spec in specs:
        if spec.path not in values:
            continue
        raw = values[spec.path]
        if spec.kind == "list":
            value: Any = [v for chunk in raw for v in chunk]
        elif spec.kind == "lora":
            value = [_parse_lora(v) for v in raw]
        elif spec.kind == "codes":
            value = list(_parse_codes(raw))
        else:
            value = raw
        node = out
        *parents, leaf = spec.path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def flag_for_path(specs: list[OptionSpec], path: str) -> str | None:
    """The option a user types for a request path (``text.bpm`` -> ``--bpm``), for error messages."""
    base = path.split("[", 1)[0]
    for spec in specs:
        if spec.path == base:
            return spec.flags[0]
    return None


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` laid on top, recursing into nested dicts (used for --request files + flags)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
