"""``constraints.txt`` (the versions ``make venv`` installs) agrees with ``pyproject.toml``: every declared
dependency has exactly one pin there, the pin satisfies the declared range, and torch is left to TORCH_SPEC."""

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            assert pinned, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            key = canonicalize_name(name)
            assert key not in found, f"constraints.txt pins {name} twice"
            found[key] = pinned.strip()
    return found


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [dep for group in project["optional-dependencies"].values() for dep in group]
    return [Requirement(dep) for dep in project["dependencies"] + extras]


def test_every_declared_dependency_but_torch_is_pinned_within_its_range():
    pinned = pins()
    for req in declared():
        key = canonicalize_name(req.name)
        if key == "torch":
            assert key not in pinned, "torch is pinned by TORCH_SPEC in the Makefile, not in constraints.txt"
            continue
        assert key in pinned, f"{req.name} is declared in pyproject.toml but has no pin in constraints.txt"
        assert req.specifier.contains(pinned[key], prereleases=True), (
            f"constraints.txt pins {req.name}=={pinned[key]}, outside pyproject.toml's {req.specifier}")

