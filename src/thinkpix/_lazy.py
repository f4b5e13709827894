"""Lazy re-exports for package ``__init__`` files: a name's module is imported on first use.

``import thinkpix`` and the command line's ``--help`` then cost milliseconds instead of torch's and
diffusers' import time, while ``thinkpix.apply_rsr`` and ``from thinkpix import RSRConfig`` keep working.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
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


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``callback`` once module ``name`` has been imported (by anyone), then steps aside."""

    def __init__(self, name: str, callback: Callable[[], None]):
        self.name, self.callback = name, callback

    def find_spec(self, fullname: str, path: object = None, target: object = None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        run_module, callback = spec.loader.exec_module, self.callback

        def exec_module(module: types.ModuleType) -> None:
            run_module(module)
            callback()

        spec.loader.exec_module = exec_module
        return spec


def after_import(name: str, callback: Callable[[], None]) -> None:
    """Call ``callback`` now if module ``name`` is loaded, else right after it is first imported."""
    if name in sys.modules:
        callback()
    else:
        sys.meta_path.insert(0, _AfterImport(name, callback))
