"""``thinkpix analyze routing``: summaries of hand-built traces with known answers, headless figures, end to end."""

import json
import math

import numpy as np
import pytest
import torch

from test_shapes_pipelines import pretend_trained
from thinkpix import RoutingRecord, RoutingTrace, RSRConfig, apply_rsr, rsr_layers, save_rsr
from thinkpix.analysis.plots import plot_usage_heatmap
from thinkpix.analysis.routing import (
    SPECIALISATION_TV,
    _conditional_rows,
    analyze_routing,
    select_samples,
    summarize_trace,
    trace_layers,
)
from thinkpix.analysis.trajectories import (
    displacement_coherence,
    pca_2d,
    plot_expert_maps,
    plot_gate_entropy,
    plot_trajectories,
    token_path,
)
from thinkpix.cli import main
from thinkpix.shapes.pipeline_t2i import ShapesTextToImagePipeline

TIMESTEPS = [950.0 - 100.0 * i for i in range(10)]  # one call per bucket, high noise first
PNG = b"\x89PNG\r\n\x1a\n"


def make_trace(route, m=2, steps=2, batch=2, tokens=16, layer=3, probs=None, states=None) -> RoutingTrace:
    """A trace of one layer, one call per timestep of ``TIMESTEPS``; ``route(call, t) -> (steps, batch, tokens)``."""
    trace = RoutingTrace()
    for call, t in enumerate(TIMESTEPS):
        experts = route(call, t)
        p = torch.nn.functional.one_hot(experts, m).float() if probs is None else probs(call, t)
        s = None if states is None else states(call, t)
        trace.records.append(RoutingRecord(layer, call, torch.full((batch,), t), experts, p, s))
    return trace


def test_a_timestep_router_specialises_with_exact_utilisation():
    # expert 0 at high noise (t >= 500), expert 1 at low noise, every token, every step
    route = lambda call, t: torch.full((2, 2, 16), 0 if t >= 500 else 1)
    probs = lambda call, t: torch.tensor([0.9, 0.1] if t >= 500 else [0.1, 0.9]).expand(2, 2, 16, 2)
    layer = summarize_trace(make_trace(route, probs=probs))["layers"]["3"]
    assert layer["utilisation"] == [0.5, 0.5] and layer["usage"] == [[0.5, 0.5], [0.5, 0.5]]
    assert layer["consistency"] == [1.0] and not layer["collapsed"] and layer["collapse_warning"] is None
    entropy = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert layer["entropy"] == pytest.approx([entropy, entropy], abs=1e-6)
    spec = layer["specialisation"]
    assert spec["appears"] and spec["mean_tv"] == 1.0 and spec["tv_per_step"] == [1.0, 1.0]
    assert spec["early_bucket"] == [900.0, 1000.0] and spec["late_bucket"] == [0.0, 100.0]
    assert "specialises across diffusion timesteps" in spec["statement"]
    assert spec["max_pair"] == {"tv": 1.0, "buckets": [[0.0, 100.0], [500.0, 600.0]]}
    assert len(layer["usage_by_timestep"]) == 10
    assert layer["usage_by_timestep"][0] == {"timesteps": [0.0, 100.0], "decisions": 64,
                                             "usage": [[0.0, 1.0], [0.0, 1.0]]}
    assert summarize_trace(make_trace(route, probs=probs))["specialisation_across_timesteps"].startswith("yes")


def test_a_step_router_differs_across_latent_steps_but_not_timesteps():
    # step 1 -> expert 0, step 2 -> expert 1 at every timestep: consistency 0, no timestep specialisation
    route = lambda call, t: torch.tensor([0, 1])[:, None, None].expand(2, 2, 16)
    layer = summarize_trace(make_trace(route))["layers"]["3"]
    assert layer["consistency"] == [0.0] and layer["usage"] == [[1.0, 0.0], [0.0, 1.0]]
    assert layer["specialisation"]["mean_tv"] == 0.0 and not layer["specialisation"]["appears"]
    assert layer["entropy"] == [0.0, 0.0]


def test_a_uniform_random_router_has_no_specialisation_and_maximal_entropy():
    g = torch.Generator().manual_seed(0)
    m = 4
    route = lambda call, t: torch.randint(0, m, (3, 4, 64), generator=g)
    probs = lambda call, t: torch.full((3, 4, 64, m), 1 / m)
    summary = summarize_trace(make_trace(route, m=m, steps=3, batch=4, tokens=64, probs=probs))
    layer = summary["layers"]["3"]
    assert layer["entropy"] == pytest.approx([math.log(m)] * 3, abs=1e-5) and layer["max_entropy"] == round(
        math.log(m), 6)
    assert layer["utilisation"] == pytest.approx([1 / m] * m, abs=0.02)
    assert layer["consistency"] == pytest.approx([1 / m] * 2, abs=0.03)
    assert not layer["collapsed"] and not layer["specialisation"]["appears"]
    assert layer["specialisation"]["mean_tv"] < SPECIALISATION_TV / 2
    assert "no specialisation" in layer["specialisation"]["statement"]
    assert summary["specialisation_across_timesteps"].startswith("no")


def test_a_collapsed_router_is_flagged():
    # 15 of 16 tokens take expert 1 at every step: 93.75% > 90%
    route = lambda call, t: torch.tensor([0] + [1] * 15).expand(2, 2, 16)
    layer = summarize_trace(make_trace(route))["layers"]["3"]
    assert layer["collapsed"] and layer["utilisation"] == [0.0625, 0.9375]
    assert "expert 1 takes 93.8%" in layer["collapse_warning"]


def test_traces_without_timesteps_or_records():
    trace = make_trace(lambda call, t: torch.zeros(2, 2, 16, dtype=torch.long))
    trace.records = [r._replace(timestep=None) for r in trace.records]
    layer = summarize_trace(trace)["layers"]["3"]
    assert "specialisation" not in layer and layer["utilisation"] == [1.0, 0.0]
    with pytest.raises(ValueError, match="empty"):
        summarize_trace(RoutingTrace())


def test_select_samples_and_conditional_rows():
    route = lambda call, t: torch.arange(4)[None, :, None].expand(2, 4, 16) % 2
    trace = select_samples(make_trace(route, batch=4), [2, 3])
    assert trace_layers(trace) == [3] and trace.records[0].experts[0, :, 0].tolist() == [0, 1]
    assert trace.records[0].timestep.shape == (2,)
    t2i, dit = type("ShapesTextToImagePipeline", (), {})(), type("DiTPipeline", (), {})()
    assert _conditional_rows(t2i, 4, 2) == [2, 3] and _conditional_rows(dit, 4, 2) == [0, 1]
    assert _conditional_rows(t2i, 2, 2) == [0, 1]
    with pytest.raises(ValueError, match="twice"):
        _conditional_rows(t2i, 3, 2)
    # guidance in an interval: unguided steps trace the 2 conditional rows, guided ones [uncond, cond]
    mixed = make_trace(route, batch=4)
    mixed.records[0] = select_samples(mixed, [2, 3]).records[0]
    conditional = select_samples(mixed, lambda batch: _conditional_rows(t2i, batch, 2))
    assert all(r.experts[0, :, 0].tolist() == [0, 1] for r in conditional.records)


def coherent_then_divergent(call, t, steps=3, tokens=16, dim=8):
    """Early (t >= 500) every token moves along the same direction; late each token moves its own way."""
    g = torch.Generator().manual_seed(call)
    start = torch.randn(tokens, dim, generator=g)
    moves = torch.randn(1 if t >= 500 else tokens, dim, generator=g).expand(tokens, dim)
    path = torch.stack([start + k * moves for k in range(steps)])  # (T, N, D)
    return path[:, None].expand(steps, 2, tokens, dim).clone()


def test_trajectory_numbers():
    assert displacement_coherence(coherent_then_divergent(0, 900.0)[:, 0]) == pytest.approx(1.0)
    assert abs(displacement_coherence(coherent_then_divergent(0, 100.0)[:, 0])) < 0.5
    assert displacement_coherence(torch.randn(1, 4, 3)) is None
    states = torch.randn(3, 16, 8, generator=torch.Generator().manual_seed(0))
    xy = pca_2d(states)
    assert xy.shape == (3, 16, 2) and xy.reshape(-1, 2).mean(0).abs().max() < 1e-5
    flat = states.reshape(-1, 8) - states.reshape(-1, 8).mean(0)
    top = torch.linalg.svdvals(flat.double())[:2] ** 2
    assert (xy.reshape(-1, 2).double() ** 2).sum(0) == pytest.approx(top.tolist(), rel=1e-4)
    assert torch.equal(pca_2d(states), xy)


def test_figures_render_headless(tmp_path):
    route = lambda call, t: (torch.arange(16) % 2).expand(3, 2, 16) if t >= 500 else torch.zeros(3, 2, 16).long()
    half = lambda call, t: torch.full((3, 2, 16, 2), 0.5)
    trace = make_trace(route, steps=3, probs=half, states=coherent_then_divergent)
    path = token_path(trace, 3, row=1, phase="late")
    assert path.timestep == 50.0 and path.states.shape == (3, 16, 8) and path.experts.shape == (3, 16)
    summary = summarize_trace(trace)["layers"]["3"]["trajectories"]
    assert summary["early"] == {"timestep": 950.0, "coherence": pytest.approx(1.0)}
    assert summary["late"]["timestep"] == 50.0 and summary["late"]["coherence"] < 0.5
    files = [plot_trajectories(trace, 3, tmp_path / "traj.png"), plot_expert_maps(trace, 3, tmp_path / "maps.png"),
             plot_expert_maps(trace, 3, tmp_path / "maps_image.png", row=1, image=np.zeros((16, 16, 3), np.uint8)),
             plot_gate_entropy({3: [0.6, 0.5, 0.4], 5: [0.1, 0.2, 0.3]}, 2, tmp_path / "entropy.png"),
             plot_usage_heatmap(trace, 3, tmp_path / "usage.png")]
    for f in files:
        assert f.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="grid"):
        plot_expert_maps(trace, 3, tmp_path / "bad.png", grid=(3, 5))
    with pytest.raises(ValueError, match="states=True"):
        token_path(make_trace(route, steps=3), 3)


@pytest.fixture(scope="module")
def tiny_rsr(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    pipe = ShapesTextToImagePipeline.from_scratch("mmdit-s", seed=0, width=32, head_dim=16, num_layers=2)
    pretend_trained(pipe.transformer)
    pipe.save_pretrained(root / "pipe")
    apply_rsr(pipe.transformer, RSRConfig(num_experts=2, latent_steps=3, rank=4, layers=(1,)))
    for proc in rsr_layers(pipe.transformer).values():
        pretend_trained(proc.rsr, seed=2)
    save_rsr(pipe.transformer, root / "rsr")
    return root


def test_analyze_routing_end_to_end(tiny_rsr, tmp_path):
    out = tmp_path / "routing"
    prompts = ["a photo of a red circle", "a photo of two blue squares"]
    summary = analyze_routing(tiny_rsr / "pipe", tiny_rsr / "rsr", prompts, out, samples=2, steps=3, seed=0)
    layer = summary["layers"]["1"]
    assert layer["samples"] == 4 and layer["calls"] == 3 and layer["tokens"] == 64 and layer["latent_steps"] == 3
    assert sum(layer["utilisation"]) == pytest.approx(1.0) and len(layer["entropy"]) == 3
    assert len(layer["usage_by_timestep"]) == 3 and layer["specialisation"]["mean_tv"] is not None
    assert set(layer["trajectories"]) == {"early", "late"}
    health = layer["health"]  # decisiveness against Gumbel(0, 1) noise and expert divergence per latent step
    assert len(health["margin"]) == len(health["agreement"]) == len(health["divergence"]) == 3
    assert all(m >= 0 for m in health["margin"]) and all(1 / 2 <= a <= 1 for a in health["agreement"])
    assert all(len(d) == 3 and all(v is None or -1 <= v <= 1 for v in d) for d in health["divergence"])
    names = {"samples.png", "usage_layer1.png", "trajectories_layer1.png", "experts_layer1.png", "entropy.png"}
    assert set(summary["run"]["figures"].values()) == names
    for name in names:
        assert (out / name).read_bytes()[:8] == PNG
    saved = json.loads((out / "summary.json").read_text())
    assert saved["layers"]["1"]["utilisation"] == layer["utilisation"]
    assert saved["run"]["rsr_config"]["latent_steps"] == 3 and saved["run"]["prompts"] == prompts


def test_cli(tiny_rsr, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a red circle\n\na photo of a green triangle\n")
    code = main(["analyze", "routing", "--model", str(tiny_rsr / "pipe"), "--rsr", str(tiny_rsr / "rsr"),
                 "--prompts", str(prompts), "--prompts", "a photo of a cyan diamond", "--num-inference-steps", "2",
                 "--out", str(tmp_path / "out")])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["specialisation_across_timesteps"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["run"]["prompts"] == [
        "a photo of a red circle", "a photo of a green triangle", "a photo of a cyan diamond"]
    assert main(["analyze", "routing", "--model", str(tiny_rsr / "pipe"), "--prompts", "x",
                 "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("thinkpix analyze: error:") and "--rsr" in err and "\n" not in err
    with pytest.raises(SystemExit):
        main(["analyze", "routing", "--help"])
    assert "--prompts" in capsys.readouterr().out
    assert np.isfinite(printed.get("seconds", 0.0))
