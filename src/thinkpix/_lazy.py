"""Lazy re-exports for package ``__init__`` files: a name's module is imported on first use.

``import thinkpix`` and the command line's ``--help`` then cost milliseconds instead of torch's and
diffusers' import time, while ``thinkpix.apply_rsr`` and ``from thinkpix import RSRConfig`` keep working.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]) -> tuple[Callable, Callable, list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``; ``exports`` maps a relative module to its names."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name], package), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__, sorted(where)
