import json

import pytest

from thinkpix import RSRConfig

INVALID = [
    ({"num_experts": 0}, "num_experts"),
    ({"num_experts": 2.5}, "num_experts"),
    ({"latent_steps": 0}, "latent_steps"),
    ({"latent_steps": True}, "latent_steps"),
    ({"rank": -4}, "rank"),
    ({"alpha": 0}, "alpha"),
    ({"alpha": float("nan")}, "alpha"),
    ({"gumbel_tau": 0.0}, "gumbel_tau"),
    ({"gumbel_tau": float("inf")}, "gumbel_tau"),
    ({"layers": ()}, "layers"),
    ({"layers": (3, 3)}, "layers"),
    ({"layers": (-1,)}, "layers"),
    ({"layers": ("12",)}, "layers"),
    ({"routing": "topk"}, "routing"),
    ({"dispatch": "loop"}, "dispatch"),
    ({"gate_input": "text"}, "gate_input"),
    ({"remodulate": "yes"}, "remodulate"),
    ({"balance_loss_weight": -0.1}, "balance_loss_weight"),
    ({"seed": -1}, "seed"),
]


@pytest.mark.parametrize(("kwargs", "field"), INVALID, ids=[f for _, f in INVALID])
def test_invalid_values_name_the_field_and_the_allowed_values(kwargs, field):
    with pytest.raises(ValueError) as err:
        RSRConfig(**kwargs)
    assert f"RSRConfig.{field}=" in str(err.value)
    assert "allowed" in str(err.value)


def test_defaults_follow_the_paper():
    cfg = RSRConfig(num_experts=2, latent_steps=2)
    assert (cfg.rank, cfg.alpha, cfg.gumbel_tau, cfg.layers) == (128, 128.0, 5.0, (12,))
    assert cfg.routing == "learned" and cfg.dispatch == "sorted" and cfg.remodulate
    assert cfg.scaling == 1.0


def test_balance_loss_is_on_only_for_more_than_three_experts_unless_overridden():
    assert RSRConfig(num_experts=3).balance_loss_weight == 0.0
    assert RSRConfig(num_experts=4).balance_loss_weight > 0.0
    assert RSRConfig(num_experts=5, balance_loss_weight=0.0).balance_loss_weight == 0.0
    assert RSRConfig(num_experts=2, balance_loss_weight=0.5).balance_loss_weight == 0.5


def test_json_round_trip(tmp_path):
    cfg = RSRConfig(num_experts=5, latent_steps=5, rank=8, alpha=16, layers=[12, 4, 8], routing="random")
    assert cfg.layers == (4, 8, 12)
    path = tmp_path / "rsr_config.json"
    cfg.to_json(path)
    assert RSRConfig.from_json(path) == cfg
    assert RSRConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json())["layers"] == [4, 8, 12]


def test_unknown_and_malformed_json_fields_are_named():
    with pytest.raises(ValueError, match="unknown RSRConfig field"):
        RSRConfig.from_dict({"num_experts": 2, "experts": 3})
    with pytest.raises(ValueError, match="malformed"):
        RSRConfig.from_json("{not json")
