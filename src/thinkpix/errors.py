"""How problems reach the user: ``UserError`` for bad input (``thinkpix.cli`` prints it as one line and exits
with status 2), and ``notices_to_stderr`` for the one-line notices of the library (a resume, a fallback, a
clean-up), which it logs to the ``thinkpix`` logger.

Library code raises ``UserError`` (or a subclass) for anything the user can fix: a bad argument, a
folder that cannot be used, a checkpoint that does not fit. It subclasses ``ValueError`` so callers that
already catch ``ValueError`` keep working. Programming errors stay ordinary exceptions and show their
traceback.
"""

from __future__ import annotations

import logging
import sys


class UserError(ValueError):
    """Bad input, named in one line (field or path, and what is allowed)."""


def check_positive_int(value, name: str) -> int:
    """``value`` as an integer >= 1, or a ``UserError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name}={value!r} is invalid: allowed values are integers >= 1")
    return value


class _StderrHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)  # the current sys.stderr, not the one at set-up


def notices_to_stderr(prefix: str) -> None:
    """Print the ``thinkpix`` logger's notices as ``<prefix>: <message>`` lines (the command line's set-up)."""
    logger = logging.getLogger("thinkpix")
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(f"{prefix}: %(message)s"))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
