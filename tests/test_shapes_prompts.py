"""GenEval-format prompts: templates, the compositional split, metadata validation and jsonl I/O."""

import json

import pytest

from thinkpix.shapes import (
    all_metadata,
    bindings,
    evaluation_metadata,
    read_metadata_jsonl,
    training_metadata,
    training_samples,
    validate_metadata,
    write_metadata_jsonl,
)
from thinkpix.shapes.metadata import TAGS
from thinkpix.shapes.prompts import (
    HELDOUT_COLOR_SHAPES,
    color_attr_metadata,
    counting_metadata,
    position_metadata,
)

COMPOSITIONAL = ("counting", "colors", "position", "color_attr")


def test_templates_match_geneval_format():
    assert position_metadata("triangle", "left of", "circle") == {
        "tag": "position",
        "include": [{"class": "circle", "count": 1}, {"class": "triangle", "count": 1, "position": ["left of", 0]}],
        "prompt": "a photo of a triangle left of a circle",
    }
    assert counting_metadata("circle", 3) == {
        "tag": "counting",
        "include": [{"class": "circle", "count": 3}],
        "exclude": [{"class": "circle", "count": 4}],
        "prompt": "a photo of three circles",
    }
    assert (
        color_attr_metadata("red", "circle", "blue", "square")["prompt"] == "a photo of a red circle and a blue square"
    )


def test_heldout_eval_shares_no_binding_with_training():
    train, held = training_metadata(), evaluation_metadata()
    assert {m["tag"] for m in held} == set(TAGS)
    train_bindings = set().union(*(bindings(m) for m in train))
    eval_bindings = set().union(*(bindings(m) for m in held))
    assert eval_bindings and not train_bindings & eval_bindings
    for meta in held:
        assert bool(bindings(meta)) == (meta["tag"] in COMPOSITIONAL)
    # a spatial fact is held out in both phrasings: "A right of B" is "B left of A"
    prompts = {m["prompt"] for m in held}
    assert "a photo of a circle left of a square" in prompts and "a photo of a square right of a circle" in prompts
    assert not prompts & {m["prompt"] for m in train if m["tag"] in COMPOSITIONAL}


def test_training_samples_never_show_heldout_pairs():
    train_prompts = {m["prompt"] for m in training_metadata()}
    for sample in training_samples(seed=0, n=400):
        assert sample.prompt in train_prompts
        assert not any((o.color, o.shape) in HELDOUT_COLOR_SHAPES for o in sample.scene.objects)


def test_jsonl_round_trip(tmp_path):
    records = all_metadata()
    path = write_metadata_jsonl(tmp_path / "meta.jsonl", records)
    assert read_metadata_jsonl(path) == records


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"line 2: not valid JSON"),
        ('{"tag": "colours", "include": [], "prompt": "x"}', r"line 2: tag='colours' .*allowed values: single_object"),
        ('{"tag": "single_object", "include": [{"class": "circle", "count": 1}]}', r"line 2 is missing .*'prompt'"),
        (
            '{"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "pink"}], "prompt": "x"}',
            r"line 2: include\[0\]\.color='pink' .*allowed values: red",
        ),
        (
            '{"tag": "counting", "include": [{"class": "circle", "count": 5}], "prompt": "x"}',
            r"line 2: include\[0\]\.count=5 is out of range; allowed values: 2 to 4",
        ),
        (
            '{"tag": "position", "include": [{"class": "circle", "count": 1}, '
            '{"class": "square", "count": 1, "position": ["beside", 0]}], "prompt": "x"}',
            r"line 2: include\[1\]\.position\[0\]='beside' .*allowed values: left of",
        ),
        ('{"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": ""}', r"line 2: prompt"),
        (
            '{"tag": "single_object", "include": [{"klass": "circle", "count": 1}], "prompt": "x"}',
            r"line 2: include\[0\] has unknown key\(s\) \['klass'\]",
        ),
    ],
)
def test_malformed_lines_name_line_and_problem(tmp_path, line, message):
    good = json.dumps(all_metadata()[0])
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(ValueError, match=message):
        read_metadata_jsonl(path)


@pytest.mark.parametrize("count", [0, 1, 5])
def test_counts_out_of_range(count):
    with pytest.raises(ValueError, match=rf"count={count} is out of range; allowed values: 2 to 4"):
        counting_metadata("circle", count)


def test_validate_rejects_other_tag_shapes():
    with pytest.raises(ValueError, match=r"include\[0\] needs a 'color'"):
        validate_metadata({"tag": "colors", "include": [{"class": "circle", "count": 1}], "prompt": "x"})
    with pytest.raises(ValueError, match=r"include\[1\] needs a 'position'"):
        validate_metadata(
            {
                "tag": "position",
                "include": [{"class": "circle", "count": 1}, {"class": "square", "count": 1}],
                "prompt": "x",
            }
        )
