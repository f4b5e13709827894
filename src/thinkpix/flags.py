"""Command-line parsing shared by every ``thinkpix`` command.

* :class:`Parser`: no prefix abbreviations (``--num-exp`` is an error, not ``--num-experts``), every
  ``--flag-name`` also spelled ``--flag_name`` (diffusers' scripts use underscores), and ``--help`` that
  shows defaults. Sub-commands inherit it through ``add_subparsers``.
* :func:`add_config_flags`: one flag per field of a config dataclass, its help, choices and type read
  from the field's :func:`~thinkpix.core.fields.knob` metadata, so a new field is a new flag.

Only the standard library and ``core.fields`` are imported: ``thinkpix --help`` must not load torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

CLI_TYPES = (int, float, str, bool)


def flag_names(name: str, aliases: Iterable[str] = ()) -> list[str]:
    """``--name-with-dashes`` for a field name, then the aliases the same way."""
    return [f"--{n.replace('_', '-')}" for n in (name, *aliases)]


def _with_underscores(names: tuple[str, ...]) -> tuple[str, ...]:
    extra = tuple(n.replace("-", "_").replace("__", "--", 1) for n in names if n.startswith("--") and "-" in n[2:])
    return names + tuple(n for n in extra if n not in names)


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: ...)`` where a default exists and lists only the dashed spelling of a flag."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        quiet = action.default in (None, False, argparse.SUPPRESS) or isinstance(action, argparse._VersionAction)
        if "(default" in text or quiet or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"

    def _format_action_invocation(self, action: argparse.Action) -> str:
        shown = [s for s in action.option_strings if "_" not in s]
        if not shown or len(shown) == len(action.option_strings):
            return super()._format_action_invocation(action)
        return super()._format_action_invocation(_Shown(action, shown))


class _Shown(argparse.Action):
    """A view of ``action`` with fewer option strings, for the help text only."""

    def __init__(self, action: argparse.Action, option_strings: list[str]):
        super().__init__(option_strings, action.dest, action.nargs, action.const, action.default, action.type,
                         action.choices, action.required, action.help, action.metavar)


class _BooleanFlag(argparse.BooleanOptionalAction):
    """``--x`` / ``--no-x`` whose usage line leaves out the underscore spellings."""

    def format_usage(self) -> str:
        return " | ".join(s for s in self.option_strings if "_" not in s)


class _Group(argparse._ArgumentGroup):
    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action:
        return super().add_argument(*_with_underscores(names), **kwargs)


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with ``allow_abbrev=False``, underscore aliases and defaults in ``--help``.

    ``fill="package.module:function"`` defers adding a sub-command's options until that sub-command is
    parsed or its help is shown: ``function(parser)`` adds them. The top-level parser then lists the
    command without importing the module (``thinkpix sample`` never imports ``thinkpix.train``).
    """

    def __init__(self, *args: Any, fill: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self._fill = fill

    def _filled(self) -> None:
        if self._fill is not None:
            module, function = self._fill.split(":")
            self._fill = None
            getattr(importlib.import_module(module), function)(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._filled()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._filled()
        return super().format_usage()

    def format_help(self) -> str:
        self._filled()
        return super().format_help()

    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action:
        return super().add_argument(*_with_underscores(names), **kwargs)

    def add_argument_group(self, *args: Any, **kwargs: Any) -> argparse._ArgumentGroup:
        group = _Group(self, *args, **kwargs)
        self._action_groups.append(group)
        return group


def _value_type(cls: type, f: dataclasses.Field) -> type | None:
    """The one CLI type of a field (``float | None`` -> float); None when a ``parse`` function is needed."""
    hint = typing.get_type_hints(cls)[f.name]
    options = [t for t in typing.get_args(hint) if t is not type(None)] if isinstance(
        hint, types.UnionType) or typing.get_origin(hint) is typing.Union else [hint]
    return options[0] if len(options) == 1 and options[0] in CLI_TYPES else None


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as err:  # argparse would print only "invalid convert value"
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _shown_default(value: Any, f: dataclasses.Field) -> str:
    if value is None and f.metadata.get("none"):
        return f"None: {f.metadata['none']}"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def add_config_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, defaults: dict[str, Any],
                     skip: Iterable[str] = (), choices: dict[str, tuple] | None = None) -> list[str]:
    """Add ``--<field>`` for every field of dataclass ``cls`` except ``skip``; returns the field names added.

    Every flag defaults to ``None`` ("not given", so a preset's value stands); ``defaults`` holds the values
    shown in ``--help``. ``choices`` narrows a field's allowed values for this command.
    """
    added = []
    for f in dataclasses.fields(cls):
        if f.name in skip or dataclasses.is_dataclass(typing.get_type_hints(cls)[f.name]):
            continue
        meta, kind = f.metadata, _value_type(cls, f)
        options = (choices or {}).get(f.name, meta.get("choices"))
        help_text = f"{meta.get('help', '')} (default: {_shown_default(defaults.get(f.name), f)})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text.replace("%", "%%")}
        if kind is bool:
            kwargs["action"] = _BooleanFlag
        else:
            kwargs["type"] = _argparse_type(meta["parse"]) if meta.get("parse") else kind
            if kwargs["type"] is None:
                raise TypeError(f"{cls.__name__}.{f.name} needs knob(parse=...) to be a command-line flag")
            if options is not None:
                kwargs["choices"] = options
        parser.add_argument(*flag_names(f.name, meta.get("aliases", ())), **kwargs)
        added.append(f.name)
    return added


def config_values(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The flags of ``names`` that were given (not ``None``)."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}



def add_sampling_options(p: argparse.ArgumentParser) -> None:
    """The options of every command that samples a pipeline (``sample``, ``generate``, ``sample-npz``)."""
    p.add_argument("--model", required=True, help="pipeline folder, hub id, or shapes-t2i / shapes-class")
    p.add_argument("--rsr", default=None, help="RSR checkpoint folder to load into the transformer")
    p.add_argument("--num-inference-steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, default=4.0)
    p.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                   help="guide only at noise levels LOW..HIGH (fractions of the training timesteps; Shapes "
                        "pipelines only); default: the pipeline's own (model_index.json), 0 1 guides every step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
