"""Lazy re-exports for package ``__init__`` files: a name's module is imported on first use.

``import thinkpix`` and the command line's ``--help`` then cost milliseconds instead of torch's and
diffusers' import time, while ``thinkpix.apply_rsr`` and ``from thinkpix import RSRConfig`` keep working.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable


class _LazyPackage(types.ModuleType):
    """A package whose exports may share a name with a submodule (``frozenlake.replay`` the function and the
    module): the import system binds the submodule on the package once it loads, and the export wins, as it
    did with an eager ``from .replay import replay``."""

    def __setattr__(self, name: str, value: object) -> None:
        # vars(), not hasattr(): a lazy sub-package would import its exports to answer hasattr
        if name in self.__dict__.get("__all__", ()) and isinstance(value, types.ModuleType) and (
                value.__name__ == f"{self.__name__}.{name}" and name in vars(value)):
            value = vars(value)[name]
        super().__setattr__(name, value)


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

    sys.modules[package].__class__ = _LazyPackage
    return __getattr__, __dir__, sorted(where)
