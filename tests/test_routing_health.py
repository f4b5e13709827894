"""Routing-health metrics with known answers, and the routing options beyond the paper (defaults: the paper)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from test_core_recursion import make_rsr, perturb, run
from test_train_engine import caption_folder
from thinkpix import LatentStepGate, RSRConfig
from thinkpix.analysis.health import trace_health
from thinkpix.core.health import expert_divergence, gate_decisiveness, gradient_scalars, health_scalars, step_health
from thinkpix.train import TrainConfig, TrainTarget, load_image_folder, load_pipeline, preset, train
from thinkpix.train.loop import parameter_groups
from tiny import tiny_sd3_pipeline


def gate_with_logits(bias, m=2, **kw):
    """A gate whose logits are exactly ``bias`` for every token (zero weights)."""
    gate = LatentStepGate(8, m, gate_input="tokens", seed=1, **kw)
    with torch.no_grad():
        gate.proj.weight.zero_()
        gate.proj.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return gate


def decide(gate, tokens=4000):
    d = gate.train()(torch.randn(2, tokens // 2, 8))
    return step_health(d.index, d.logits, gate.num_experts, gate.noise_scale, True, torch.zeros(3))


def test_a_large_margin_gate_reads_decisive_and_a_zero_gate_reads_random():
    decisive = decide(gate_with_logits([6.0, -6.0]))
    assert decisive.margin == pytest.approx(12.0)
    assert decisive.agreement == pytest.approx(torch.sigmoid(torch.tensor(12.0)).item())
    assert decisive.sampled_agreement > 0.999 and decisive.usage[0] > 0.999
    for m in (2, 5):
        random = decide(gate_with_logits([0.0] * m, m=m))
        assert random.margin == 0 and random.agreement == pytest.approx(1 / m)
        assert abs(random.sampled_agreement - 1 / m) < 0.03  # Gumbel-max with equal logits: uniform routes


@pytest.mark.parametrize("margin", [0.3, 1.0, 2.2])
def test_measured_agreement_follows_the_gumbel_max_law_and_ignores_tau(margin):
    expected = torch.sigmoid(torch.tensor(margin)).item()  # P(Logistic(0, 1) < margin)
    routes = []
    for tau in (0.5, 5.0):
        health = decide(gate_with_logits([margin, 0.0], tau=tau), tokens=20000)
        assert health.agreement == pytest.approx(expected, abs=1e-6)
        assert abs(health.sampled_agreement - expected) < 0.015
        routes.append(gate_with_logits([margin, 0.0], tau=tau).train()(torch.zeros(1, 50, 8)).index)
    assert torch.equal(routes[0], routes[1])  # argmax((l + g) / tau) = argmax(l + g): the same seeded routes


def test_the_noise_scale_sets_route_randomness():
    half = decide(gate_with_logits([1.0, 0.0], noise_scale=0.5), tokens=20000)
    assert half.agreement == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item(), abs=1e-6)
    assert abs(half.sampled_agreement - half.agreement) < 0.015
    none = decide(gate_with_logits([0.01, 0.0], noise_scale=0.0))
    assert none.agreement == 1 and none.sampled_agreement == 1


def test_gate_decisiveness_uses_the_top_two_logits():
    logits = torch.tensor([[3.0, 1.0, -2.0], [0.0, 0.5, 0.25]])
    margin, agreement = gate_decisiveness(logits)
    assert margin == pytest.approx((2.0 + 0.25) / 2)
    assert agreement == pytest.approx(logits.softmax(-1).amax(-1).mean().item())


def test_expert_divergence_known_answers():
    a = torch.randn(3, 16, 3 * 4)
    b = torch.randn(1, 3, 4, 12).repeat(3, 1, 1, 1)
    x = torch.randn(2, 40, 16)
    a[:] = a[0]  # identical experts
    torch.testing.assert_close(expert_divergence(a, b, x), torch.ones(3))
    b2 = b.clone()
    b2[1] = -b[0]  # experts 0 and 1 opposite, 2 equal to 0: pairs (0,1) -1, (0,2) 1, (1,2) -1
    torch.testing.assert_close(expert_divergence(a, b2, x), torch.full((3,), -1 / 3))
    assert expert_divergence(a, torch.zeros_like(b), x).isnan().all()  # B = 0: no update to compare
    assert expert_divergence(a[:1], b[:1], x).isnan().all()


def test_per_sample_routes_give_every_token_of_a_sample_one_expert(host, tokens):
    x, c, y = tokens
    for train_mode in (True, False):
        rsr = make_rsr(3, 2, route_per="sample").train(train_mode)
        perturb(rsr)
        out = run(rsr, host, x, c, y)
        for step in out.steps:
            assert (step.experts == step.experts[:, :1]).all()
    gate = LatentStepGate(8, 4, routing="random", route_per="sample", seed=0)
    index = gate(torch.randn(64, 10, 8)).index
    assert (index == index[:, :1]).all() and len(index[:, 0].unique()) == 4


def test_paper_defaults_route_exactly_as_before(host, tokens):
    """The paper's setting (noise 1, per token) draws z = logits + Gumbel(0, 1) from the gate's generator."""
    cfg = RSRConfig()
    assert (cfg.gumbel_noise_scale, cfg.route_per, cfg.z_loss_weight) == (1.0, "token", 0.0)
    assert TrainConfig().gumbel_at(0) == TrainConfig().gumbel_at(999) == (5.0, 1.0)
    gate = LatentStepGate(8, 3, gate_input="tokens", seed=4).train()
    x = torch.randn(2, 30, 8)
    decision = gate(x)
    logits = gate.proj(x).float()
    g = torch.Generator().manual_seed(4)
    gumbel = -torch.empty_like(logits).exponential_(generator=g).clamp_min(torch.finfo(torch.float32).tiny).log()
    soft = ((logits + gumbel) / 5.0).softmax(-1)
    assert torch.equal(decision.index, soft.argmax(-1))
    torch.testing.assert_close(decision.weights, F.one_hot(soft.argmax(-1), 3).float(), rtol=0, atol=0)


def test_health_is_returned_per_step_and_does_not_change_the_output(host, tokens):
    x, c, y = tokens
    rsr = make_rsr(2, 3).train()
    perturb(rsr)
    with_health = run(rsr, host, x, c, y)
    rsr.gate.manual_seed(0)
    rsr.measure_health = False
    without = run(rsr, host, x, c, y)
    assert without.health is None and len(with_health.health) == 3
    assert torch.equal(with_health.vision, without.vision)
    h = with_health.health[0]
    assert h.usage.sum() == pytest.approx(1.0) and 0.5 <= h.agreement <= 1 and h.sampled_agreement is not None
    assert -1 <= h.divergence.min() <= h.divergence.max() <= 1


def test_gradient_scalars_compare_the_gate_with_the_experts():
    rsr = make_rsr(2, 2)
    for p in rsr.gate.parameters():
        p.grad = torch.ones_like(p)
    for p in rsr.experts.parameters():
        p.grad = torch.full_like(p, 2.0)
    gate_n = math.sqrt(sum(p.numel() for p in rsr.gate.parameters()))
    expert_n = 2 * math.sqrt(sum(p.numel() for p in rsr.experts.parameters()))
    scalars = gradient_scalars({3: rsr})
    assert scalars["health/layer3/gate_grad_norm"] == pytest.approx(gate_n)
    assert scalars["health/layer3/gate_to_expert_grad"] == pytest.approx(gate_n / expert_n)
    assert gradient_scalars({3: make_rsr(1, 2)}) == {}  # M = 1: no gate


def test_z_loss_is_in_the_aux_loss_with_its_weight(tmp_path):
    from thinkpix import apply_rsr
    from thinkpix.models import aux_loss, rsr_layers, z_loss
    from tiny import sd3_inputs, tiny_sd3

    transformer = tiny_sd3(tmp_path)
    apply_rsr(transformer, RSRConfig(num_experts=2, latent_steps=2, rank=4, layers=(1,), z_loss_weight=0.1))
    transformer(**sd3_inputs())
    steps = rsr_layers(transformer)[1].last_steps
    expected = torch.stack([s.logits.logsumexp(-1).square().mean() for s in steps]).mean()
    torch.testing.assert_close(z_loss(transformer), expected)
    torch.testing.assert_close(aux_loss(transformer), 0.1 * expected)  # balance loss off for M = 2
    aux_loss(transformer).backward()
    assert rsr_layers(transformer)[1].rsr.gate.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("fields, pattern", [
    ({"gate_lr_multiplier": 0}, r"TrainConfig.gate_lr_multiplier=0 is invalid.*> 0"),
    ({"gumbel_tau_end": -1.0}, r"TrainConfig.gumbel_tau_end=-1.0 is invalid.*> 0"),
    ({"gumbel_noise_end": -0.1}, r"TrainConfig.gumbel_noise_end=-0.1 is invalid.*>= 0"),
    ({"z_loss_weight": float("nan")}, r"RSRConfig.z_loss_weight=nan"),
    ({"route_per": "batch"}, r"RSRConfig.route_per='batch' is invalid.*'token' or 'sample'"),
    ({"dispatch": "loop"}, r"RSRConfig.dispatch='loop' is invalid"),
])
def test_bad_routing_options_are_refused_by_name(fields, pattern):
    with pytest.raises(ValueError, match=pattern):
        TrainConfig(**fields)


def test_rsr_config_refuses_bad_routing_options_and_old_configs_load():
    with pytest.raises(ValueError, match=r"RSRConfig.gumbel_noise_scale=-1"):
        RSRConfig(gumbel_noise_scale=-1)
    with pytest.raises(ValueError, match=r"RSRConfig.route_per='pixel'.*'token' or 'sample'"):
        RSRConfig(route_per="pixel")
    old = {k: v for k, v in RSRConfig().to_dict().items() if k not in ("gumbel_noise_scale", "route_per",
                                                                         "z_loss_weight")}
    assert RSRConfig.from_dict(old) == RSRConfig()  # a checkpoint written before the options existed


def test_schedules_reach_their_end_values():
    cfg = TrainConfig(max_steps=11, gumbel_tau=5.0, gumbel_tau_end=0.5, gumbel_noise_end=0.0)
    assert cfg.gumbel_at(0) == (5.0, 1.0)
    tau, noise = cfg.gumbel_at(5)
    assert tau == pytest.approx(math.sqrt(5.0 * 0.5)) and noise == pytest.approx(0.5)
    assert cfg.gumbel_at(10) == pytest.approx((0.5, 0.0))


def test_gate_parameters_get_their_own_learning_rate():
    named = {"rsr.1.experts.lora_A": torch.nn.Parameter(torch.ones(1)),
             "rsr.1.gate.proj.weight": torch.nn.Parameter(torch.ones(1))}
    assert len(parameter_groups(named, TrainConfig())) == 1  # the paper: one group, as before
    groups = parameter_groups(named, TrainConfig(gate_lr_multiplier=10.0))
    assert [g["lr_scale"] for g in groups] == [1.0, 10.0]
    assert groups[1]["params"] == [named["rsr.1.gate.proj.weight"]]


@pytest.fixture(scope="module")
def sd3_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd3h")
    tiny_sd3_pipeline(root)
    return root / "pipe", caption_folder(root / "data")


def _train(sd3_setup, out, **fields):
    pipe_dir, data_dir = sd3_setup
    cfg = TrainConfig(**{**dict(rank=4, num_experts=2, latent_steps=2, layers=(1,), batch_size=4, max_steps=3,
                                checkpointing_steps=3, learning_rate=1e-2), **fields})
    target = TrainTarget(load_pipeline(pipe_dir))
    train(target, load_image_folder(data_dir), cfg, out, report_to="tensorboard", progress=False)
    return target


def test_training_logs_health_and_gate_gradients_and_the_options_train(sd3_setup, tmp_path):
    from benchmarks.training_log import read_scalars

    from thinkpix.models import rsr_layers

    tags = ("health/layer1/step1/margin", "health/layer1/step2/sampled_agreement", "health/layer1/step1/expert0_usage",
            "health/layer1/gate_grad_norm", "health/layer1/gate_to_expert_grad", "train/gumbel_noise",
            "train/gumbel_tau")
    target = _train(sd3_setup, tmp_path / "options", gate_lr_multiplier=10.0, gumbel_noise_end=0.0,
                    gumbel_tau_end=1.0, z_loss_weight=1e-3, route_per="sample", dispatch="dense")
    logged = read_scalars(tmp_path / "options", tags)
    assert all(len(logged[t]) == 3 for t in tags), {t: len(v) for t, v in logged.items()}
    assert logged["train/gumbel_noise"] == {1: 1.0, 2: 0.5, 3: 0.0} and logged["train/gumbel_tau"][3] == 1.0
    assert logged["health/layer1/step2/sampled_agreement"][3] == 1.0  # the last step trains with argmax routes
    gate = rsr_layers(target.transformer)[1].rsr.gate
    assert (gate.tau, gate.noise_scale, gate.route_per) == (1.0, 0.0, "sample")
    scalars = health_scalars({1: rsr_layers(target.transformer)[1].last_health})  # the latest call's health
    assert scalars["health/layer1/step1/expert0_usage"] + scalars["health/layer1/step1/expert1_usage"] == 1.0
    assert gradient_scalars({1: rsr_layers(target.transformer)[1].rsr}) == {}  # gradients are freed after a step


def test_finetune_cli_reaches_the_routing_options():
    from thinkpix.cli import build_parser

    args = build_parser().parse_args(
        ["finetune", "--pretrained-model-name-or-path", "p", "--train-data-dir", "d", "--output-dir", "o",
         "--gate-lr-multiplier", "10", "--gumbel-noise-end", "0.1", "--gumbel-tau-end", "1", "--z-loss-weight",
         "1e-3", "--route-per", "sample", "--dispatch", "dense", "--balance-loss-weight", "0.01"])
    from thinkpix.train.cli import train_config

    cfg = train_config(args, method="rsr")
    assert (cfg.gate_lr_multiplier, cfg.gumbel_noise_end, cfg.gumbel_tau_end, cfg.z_loss_weight, cfg.route_per,
            cfg.dispatch, cfg.balance_loss_weight) == (10.0, 0.1, 1.0, 1e-3, "sample", "dense", 0.01)
    assert preset("shapes").gate_lr_multiplier == 1.0
    routed = preset("shapes-routed")
    assert (routed.gumbel_noise_end, routed.balance_loss_weight) == (0.0, 0.01)


def test_trace_health_from_probabilities():
    from thinkpix import RoutingRecord
    from thinkpix.core.experts import ExpertBank

    logits = torch.tensor([2.0, 0.0]).expand(2, 3, 5, 2)  # (T, B, N, M)
    bank = ExpertBank(2, 8, 8, rank=2, scaling=1.0)
    record = RoutingRecord(1, 0, None, logits.argmax(-1), logits.softmax(-1), torch.randn(2, 3, 5, 8))
    health = trace_health([record], bank)
    assert health["margin"] == pytest.approx([2.0, 2.0]) and health["agreement"] == pytest.approx(
        [torch.sigmoid(torch.tensor(2.0)).item()] * 2)
    assert health["divergence"] == [[None] * 3] * 2  # B = 0: nothing to compare yet
    json.dumps(health)


def test_benchmark_input_dependence_and_selection_rule():
    from benchmarks.routing_health import input_dependence
    from benchmarks.routing_health_report import flags, healthy

    alike = torch.zeros(2, 4, 10, dtype=torch.long)  # every sample on expert 0
    assert input_dependence(alike, 2) == 0
    split = torch.zeros(1, 4, 10, dtype=torch.long)
    split[:, 2:] = 1  # half the samples on each expert: TV 0.5 from the batch's 50/50
    assert input_dependence(split, 2) == pytest.approx(0.5)

    def row(agreement, usage, dependence):
        return {"held_in": {"train_mode_agreement": agreement, "min_utilisation": min(usage),
                            "max_utilisation": max(usage), "input_dependence": dependence}}

    assert healthy(row(0.95, [0.4, 0.6], 0.0)) and not healthy(row(0.85, [0.4, 0.6], 0.0))
    assert not healthy(row(0.99, [0.02, 0.98], 0.0)) and flags(row(0.99, [0.02, 0.98], 0.0)) == "collapsed"
    assert healthy(row(0.99, [0.04, 0.5, 0.46], 0.3))  # a rare expert is fine when routes follow the input
    assert flags(row(0.99, [0.04, 0.5, 0.46], 0.3)) == "expert < 5% (input-dependent)"
