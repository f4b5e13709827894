"""DPG-Bench-style dense prompts for the Shapes world, each with its question graph.

DPG-Bench (ELLA, TencentQQGYLab/ELLA, dpg_bench/) pairs each long prompt with yes/no questions
("propositions") tagged by an L1 category (entity, attribute, relation, other, global) and by the
ids of parent questions they depend on. Here a prompt names 3 or 4 objects in 2 to 4 groups of
distinct shapes, e.g. "a photo of a red circle left of a blue square, and two green triangles":

* entity - whole (circle): "Is there a circle?" (no parent);
* other - count (triangle, ==2): "Are there two triangles?" (parent: the triangle entity);
* attribute - color / size (circle, red): "Is the circle red?" (parent: the circle entity);
* relation - spatial (circle, square, left of): "Is the circle left of the square?" (parents:
  both entities);
* global - (plain background) and global - (objects, ==N): the image shows nothing but the
  N objects on a plain background (no parent).

Scoring lives in :mod:`thinkpix.shapes.dpg_score`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from thinkpix.shapes.geometry import RELATIONS
from thinkpix.shapes.prompts import NUMBER_WORDS
from thinkpix.shapes.scene import (
    COLORS,
    DEFAULT_IMAGE_SIZE,
    MAX_OBJECTS,
    PLURALS,
    SHAPES,
    SIZES,
    ObjectSpec,
    Scene,
    check_choice,
    check_object_count,
    place_objects,
    random_spec,
)

DPG_CATEGORIES = ("entity", "attribute", "relation", "other", "global")
DPG_OBJECT_COUNTS = (3, 4)


@dataclass(frozen=True)
class DpgGroup:
    """``count`` objects of one ``shape``, with an optional colour and size stated by the prompt."""

    shape: str
    count: int = 1
    color: str | None = None
    size: str | None = None

    def __post_init__(self) -> None:
        check_choice("shape", self.shape, SHAPES)
        check_object_count(self.count, "count")
        if self.color is not None:
            check_choice("color", self.color, tuple(COLORS))
        if self.size is not None:
            check_choice("size", self.size, SIZES)

    def phrase(self) -> str:
        words = [w for w in (self.size, self.color) if w is not None]
        if self.count == 1:
            return " ".join(["a", *words, self.shape])
        return " ".join([NUMBER_WORDS[self.count], *words, PLURALS[self.shape]])


@dataclass(frozen=True)
class DpgQuestion:
    """One proposition: ``check`` is the machine-readable form answered from detections."""

    id: int
    category: str
    proposition: str
    question: str
    parents: tuple[int, ...]
    check: tuple


@dataclass(frozen=True)
class DpgItem:
    """A dense prompt, its object groups, its optional relation ``(i, rel, j)`` between two
    single-object groups, and its question graph."""

    prompt: str
    groups: tuple[DpgGroup, ...]
    relation: tuple[int, str, int] | None
    questions: tuple[DpgQuestion, ...]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DpgItem:
        """Rebuild an item written by :meth:`to_dict` (e.g. after a JSON round trip)."""
        groups = tuple(DpgGroup(**g) for g in data["groups"])
        relation = tuple(data["relation"]) if data.get("relation") is not None else None
        item = build_item(groups, relation)
        if data.get("prompt", item.prompt) != item.prompt:
            raise ValueError(f"prompt {data['prompt']!r} does not match its groups; expected {item.prompt!r}")
        return item


def build_item(groups: tuple[DpgGroup, ...], relation: tuple[int, str, int] | None = None) -> DpgItem:
    """Compose the prompt and question graph for ``groups`` (distinct shapes, 3 or 4 objects)."""
    groups = tuple(groups)
    total = sum(g.count for g in groups)
    if total not in DPG_OBJECT_COUNTS:
        raise ValueError(f"total object count={total} is out of range; allowed values: 3 to {MAX_OBJECTS}")
    if len({g.shape for g in groups}) != len(groups):
        raise ValueError(f"group shapes must differ, got {[g.shape for g in groups]}")
    clauses, rest = [], list(range(len(groups)))
    if relation is not None:
        i, rel, j = relation
        check_choice("relation", rel, RELATIONS)
        if i == j or groups[i].count != 1 or groups[j].count != 1:
            raise ValueError(f"relation {relation} must join two different single-object groups")
        clauses.append(f"{groups[i].phrase()} {rel} {groups[j].phrase()}")
        rest = [k for k in rest if k not in (i, j)]
    clauses += [groups[k].phrase() for k in rest]
    if len(clauses) == 2 and relation is None:
        text = " and ".join(clauses)
    else:
        text = ", ".join(clauses[:-1]) + ", and " + clauses[-1]
    return DpgItem(f"a photo of {text}", groups, relation, _questions(groups, relation, total))


def _questions(
    groups: tuple[DpgGroup, ...], relation: tuple[int, str, int] | None, total: int
) -> tuple[DpgQuestion, ...]:
    questions: list[DpgQuestion] = []

    def add(category: str, proposition: str, question: str, parents: tuple[int, ...], check: tuple) -> int:
        questions.append(DpgQuestion(len(questions) + 1, category, proposition, question, parents, check))
        return len(questions)

    add("global", "global - (plain background)", "Is the background plain?", (), ("background",))
    add(
        "global",
        f"global - (objects, =={total})",
        f"Does the image show exactly {NUMBER_WORDS[total]} objects?",
        (),
        ("total", total),
    )
    entity = {
        g.shape: add("entity", f"entity - whole ({g.shape})", f"Is there a {g.shape}?", (), ("entity", g.shape))
        for g in groups
    }
    for g in groups:
        noun, verb = (g.shape, "Is") if g.count == 1 else (PLURALS[g.shape], "Are")
        parent = (entity[g.shape],)
        if g.count > 1:
            add(
                "other",
                f"other - count ({g.shape}, =={g.count})",
                f"Are there {NUMBER_WORDS[g.count]} {noun}?",
                parent,
                ("count", g.shape, g.count),
            )
        for kind, value in (("color", g.color), ("size", g.size)):
            if value is not None:
                add(
                    "attribute",
                    f"attribute - {kind} ({g.shape}, {value})",
                    f"{verb} the {noun} {value}?",
                    parent,
                    (kind, g.shape, value, g.count),
                )
    if relation is not None:
        a, rel, b = groups[relation[0]].shape, relation[1], groups[relation[2]].shape
        add(
            "relation",
            f"relation - spatial ({a}, {b}, {rel})",
            f"Is the {a} {rel} the {b}?",
            (entity[a], entity[b]),
            ("relation", a, rel, b),
        )
    return tuple(questions)


def random_item(rng: np.random.Generator) -> DpgItem:
    """One random dense prompt: 3-4 objects in 2-4 groups; colours (80%), sizes (40%), and a
    relation (75% when two groups hold a single object)."""
    total = int(rng.choice(DPG_OBJECT_COUNTS))
    n_groups = int(rng.integers(2, total + 1))
    shapes = [SHAPES[k] for k in rng.permutation(len(SHAPES))[:n_groups]]
    counts = np.ones(n_groups, dtype=int)
    for k in rng.integers(n_groups, size=total - n_groups):
        counts[k] += 1
    groups = tuple(
        DpgGroup(
            shape,
            int(count),
            tuple(COLORS)[rng.integers(len(COLORS))] if rng.random() < 0.8 else None,
            SIZES[rng.integers(len(SIZES))] if rng.random() < 0.4 else None,
        )
        for shape, count in zip(shapes, counts, strict=True)
    )
    singles = [k for k, g in enumerate(groups) if g.count == 1]
    relation = None
    if len(singles) >= 2 and rng.random() < 0.75:
        i, j = rng.choice(singles, size=2, replace=False)
        relation = (int(i), RELATIONS[rng.integers(len(RELATIONS))], int(j))
    return build_item(groups, relation)


def dpg_items(n: int, seed: int) -> list[DpgItem]:
    """``n`` dense prompts, fully determined by ``seed``."""
    rng = np.random.default_rng(seed)
    return [random_item(rng) for _ in range(n)]


def scene_for_item(item: DpgItem, rng: np.random.Generator, image_size: int = DEFAULT_IMAGE_SIZE) -> Scene:
    """A scene that makes every question of ``item`` true (unstated colours and sizes random)."""
    specs, first = [], []
    for group in item.groups:
        first.append(len(specs))
        for _ in range(group.count):
            spec = random_spec(rng, group.shape)
            specs.append(ObjectSpec(group.shape, group.color or spec.color, group.size or spec.size))
    relation = None
    if item.relation is not None:
        relation = (first[item.relation[0]], item.relation[1], first[item.relation[2]])
    return place_objects(specs, rng, image_size, relation)
