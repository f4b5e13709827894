"""The one exception type for bad input: ``thinkpix.cli`` prints it as one line and exits with status 2.

Library code raises ``UserError`` (or a subclass) for anything the user can fix: a bad argument, a
folder that cannot be used, a checkpoint that does not fit. It subclasses ``ValueError`` so callers that
already catch ``ValueError`` keep working. Programming errors stay ordinary exceptions and show their
traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input, named in one line (field or path, and what is allowed)."""


def check_positive_int(value, name: str) -> int:
    """``value`` as an integer >= 1, or a ``UserError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name}={value!r} is invalid: allowed values are integers >= 1")
    return value
