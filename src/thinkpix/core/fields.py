"""Config fields declared once: default, help, allowed values and check live in the field's metadata.

``knob(...)`` declares a dataclass field; ``check_values(config)`` validates every field from its
metadata (one error line naming the field and the allowed values), ``field_docs(cls)`` writes the
class's ``Args:`` section and ``thinkpix.flags`` turns the same fields into command-line flags. A new
field with a ``knob`` is validated, documented and reachable from the CLI with nothing else to edit.

Only the standard library is imported here: the command line reads these fields before torch loads.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple


class Check(NamedTuple):
    """A per-value rule and the words an error uses for it."""

    allowed: str
    test: Callable[[Any], bool]
    convert: Callable[[Any], Any] = lambda value: value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


POSITIVE_INT = Check("an integer >= 1", lambda v: _is_int(v) and v >= 1)
NON_NEGATIVE_INT = Check("an integer >= 0", lambda v: _is_int(v) and v >= 0)
POSITIVE = Check("a finite number > 0", lambda v: _is_number(v) and v > 0, float)
NON_NEGATIVE = Check("a finite number >= 0", lambda v: _is_number(v) and v >= 0, float)
FINITE = Check("a finite number", _is_number, float)
FRACTION = Check("a number in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1, float)
OPEN_FRACTION = Check("a number in (0, 1)", lambda v: _is_number(v) and 0 < v < 1, float)
BOOLEAN = Check("True or False", lambda v: isinstance(v, bool))


def one_of(choices: tuple) -> Check:
    return Check(" or ".join(map(repr, choices)), lambda v: v in choices)


def knob(default: Any = dataclasses.MISSING, help: str = "", *, check: Check | None = None,
         choices: tuple | None = None, none: str | None = None, parse: Callable[[str], Any] | None = None,
         aliases: tuple[str, ...] = (), default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field whose metadata carries everything validation, docs and the CLI need.

    ``check`` (or ``choices``) is the per-value rule; ``none`` says what ``None`` means where ``None`` is
    allowed; ``parse`` turns a command-line string into a value (default: the field's type); ``aliases``
    are extra flag names (e.g. a diffusers spelling).
    """
    if choices is not None:
        check = one_of(choices)
    metadata = {"help": help, "check": check, "choices": choices, "none": none, "parse": parse, "aliases": aliases}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def allowed_values(f: dataclasses.Field) -> str:
    """The allowed values of field ``f`` in words (its check, plus what ``None`` means)."""
    check, none = f.metadata.get("check"), f.metadata.get("none")
    words = check.allowed if check is not None else "any value"
    return f"{words}, or None for {none}" if none else words


def fail(config: Any, name: str, value: Any, allowed: str) -> None:
    """Raise the one-line error every config uses: ``<Class>.<field>=<value> is invalid: allowed ...``."""
    raise ValueError(f"{type(config).__name__}.{name}={value!r} is invalid: allowed values are {allowed}")


def check_values(config: Any) -> None:
    """Validate (and convert, e.g. int -> float) every field of dataclass ``config`` that has a check."""
    for f in dataclasses.fields(config):
        check, value = f.metadata.get("check"), getattr(config, f.name)
        if check is None or (value is None and f.metadata.get("none")):
            continue
        if not check.test(value):
            fail(config, f.name, value, allowed_values(f))
        setattr(config, f.name, check.convert(value))


def check_fields(cls: type, data: dict[str, Any], extra: tuple[str, ...] = ()) -> None:
    """Raise a ValueError naming unknown keys of ``data`` and the fields dataclass ``cls`` allows."""
    known = {f.name for f in dataclasses.fields(cls)} | set(extra)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; allowed fields are {sorted(known)}")


def field_docs(cls: type) -> str:
    """An ``Args:`` section for ``cls``'s docstring, from the help of its fields."""
    lines = ["", "    Args:"]
    for f in dataclasses.fields(cls):
        if f.metadata.get("help"):
            allowed = f" Allowed: {allowed_values(f)}." if f.metadata.get("check") else ""
            lines.append(f"        {f.name}: {f.metadata['help']}{allowed}")
    return "\n".join(lines) + "\n"


def documented(cls: type) -> type:
    """Class decorator: append :func:`field_docs` to the docstring (the knobs are documented once)."""
    cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n" + field_docs(cls)
    return cls
