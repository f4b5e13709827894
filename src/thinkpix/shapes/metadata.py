"""GenEval-format prompt metadata: validation and jsonl reading/writing.

The format is GenEval's (djghosh13/geneval, prompts/evaluation_metadata.jsonl): one JSON object
per line with ``tag``, ``prompt``, ``include`` (a list of ``{"class", "count"}`` items, optionally
with ``"color"`` and ``"position": [relation, index]``) and optionally ``exclude``. A position
``[rel, j]`` on include item ``i`` means item ``i`` stands ``rel`` of include item ``j``; an
exclude item ``{"class": c, "count": n}`` means fewer than ``n`` objects of class ``c`` may appear.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from thinkpix.shapes.geometry import RELATIONS
from thinkpix.shapes.scene import COLORS, MAX_OBJECTS, SHAPES, check_choice

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COUNTING_RANGE = (2, 3, 4)
"""Counts a ``counting`` prompt may ask for (GenEval asks for 2 to 4)."""

_META_KEYS = ("tag", "include", "exclude", "prompt")
_INCLUDE_KEYS = ("class", "count", "color", "position")
_EXCLUDE_KEYS = ("class", "count")
_ITEMS_PER_TAG = {"single_object": 1, "two_object": 2, "counting": 1, "colors": 1, "position": 2, "color_attr": 2}


def _check_keys(where: str, item: object, required: tuple, allowed: tuple) -> dict:
    if not isinstance(item, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(item).__name__}")
    unknown = sorted(set(item) - set(allowed))
    if unknown:
        raise ValueError(f"{where} has unknown key(s) {unknown}; allowed keys: {', '.join(allowed)}")
    missing = [key for key in required if key not in item]
    if missing:
        raise ValueError(f"{where} is missing key(s) {missing}; required keys: {', '.join(required)}")
    return item


def _check_count(where: str, count: object, allowed: Iterable[int]) -> None:
    allowed = tuple(allowed)
    if isinstance(count, bool) or not isinstance(count, int) or count not in allowed:
        span = f"{allowed[0]} to {allowed[-1]}" if len(allowed) > 1 else f"{allowed[0]}"
        raise ValueError(f"{where}={count!r} is out of range; allowed values: {span}")


def validate_metadata(meta: object, where: str = "metadata") -> dict:
    """Check one GenEval metadata record and return it; raise ``ValueError`` naming what is wrong.

    Beyond the field types this enforces the Shapes world's vocabulary (classes, colours,
    relations), object counts of 1 to 4 per prompt, and the shape of each GenEval tag (for example
    ``counting`` asks for 2 to 4 objects of one class and ``position`` needs a relation).
    """
    meta = _check_keys(where, meta, ("tag", "include", "prompt"), _META_KEYS)
    check_choice(f"{where}: tag", meta["tag"], TAGS)
    tag = meta["tag"]
    if not isinstance(meta["prompt"], str) or not meta["prompt"].strip():
        raise ValueError(f"{where}: prompt must be a non-empty string, got {meta['prompt']!r}")
    include = meta["include"]
    if not isinstance(include, list) or len(include) != _ITEMS_PER_TAG[tag]:
        raise ValueError(f"{where}: include must be a list of {_ITEMS_PER_TAG[tag]} item(s) for tag {tag!r}")
    counts = COUNTING_RANGE if tag == "counting" else (1,)
    for i, item in enumerate(include):
        at = f"{where}: include[{i}]"
        _check_keys(at, item, ("class", "count"), _INCLUDE_KEYS)
        check_choice(f"{at}.class", item["class"], SHAPES)
        _check_count(f"{at}.count", item["count"], counts)
        if "color" in item:
            check_choice(f"{at}.color", item["color"], tuple(COLORS))
        elif tag in ("colors", "color_attr"):
            raise ValueError(f"{at} needs a 'color' for tag {tag!r}; allowed colours: {', '.join(COLORS)}")
        if "position" in item:
            pos = item["position"]
            if not isinstance(pos, list) or len(pos) != 2:
                raise ValueError(f"{at}.position={pos!r} must be [relation, index]")
            check_choice(f"{at}.position[0]", pos[0], RELATIONS)
            if i == 0:
                raise ValueError(f"{at}.position cannot refer to an earlier item: it is the first item")
            _check_count(f"{at}.position[1]", pos[1], range(i))
    if tag == "position" and "position" not in include[1]:
        raise ValueError(f"{where}: include[1] needs a 'position' [relation, 0] for tag 'position'")
    if len({item["class"] for item in include}) != len(include):
        raise ValueError(f"{where}: include classes must differ, got {[item['class'] for item in include]}")
    if sum(item["count"] for item in include) > MAX_OBJECTS:
        raise ValueError(f"{where}: include asks for more than {MAX_OBJECTS} objects in total")
    exclude = meta.get("exclude", [])
    if not isinstance(exclude, list):
        raise ValueError(f"{where}: exclude must be a list, got {type(exclude).__name__}")
    for i, item in enumerate(exclude):
        at = f"{where}: exclude[{i}]"
        _check_keys(at, item, _EXCLUDE_KEYS, _EXCLUDE_KEYS)
        check_choice(f"{at}.class", item["class"], SHAPES)
        _check_count(f"{at}.count", item["count"], range(1, MAX_OBJECTS + 2))
    return meta


def write_metadata_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    """Validate ``records`` and write them one JSON object per line; returns the path."""
    path = Path(path)
    lines = [json.dumps(validate_metadata(rec, f"record {i}")) for i, rec in enumerate(records)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def read_metadata_jsonl(path: str | Path) -> list[dict]:
    """Read and validate a GenEval metadata jsonl file; errors name the file and line number."""
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
        records.append(validate_metadata(record, where))
    return records
