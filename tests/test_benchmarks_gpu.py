"""``benchmarks/gpu.py`` runs as a standalone script: its CPU smoke mode here, a clear error without a GPU."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


def check_report(text: str, variants: list[str]) -> None:
    for name in variants:
        rows = [line for line in text.splitlines() if line.startswith(f"| {name} |")]
        assert rows, name
        for row in rows:
            cells = [c.strip() for c in row.strip("|").split("|")]
            ratios = [float(c) for c in cells[1:7]]
            assert all(r > 0 for r in ratios)
            assert float(cells[7]) <= 1e-5  # compiled forward equals eager (fp32)
    dispatch = re.findall(r"^\| (\d) \| (\w+) \| ([0-9.e+-]+) \|", text, re.M)
    assert [m for m, _, _ in dispatch] == ["2", "4"]
    assert all(float(diff) <= 1e-5 for _, _, diff in dispatch)


def test_smoke_mode_writes_the_report(tmp_path):
    out = tmp_path / "gpu.md"
    done = run_script("--smoke", "--models", "dit-xl-2", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert "DiTTransformer2DModel" in text and "SD3Transformer2DModel" not in text
    check_report(text, ["base", "peft LoRA", "RSR M=2 T=2"])


@pytest.mark.slow
def test_smoke_mode_on_both_models(tmp_path):
    out = tmp_path / "gpu.md"
    done = run_script("--smoke", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SD3Transformer2DModel" in out.read_text()
    check_report(out.read_text(), ["base", "peft LoRA", "RSR M=2 T=2"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_without_a_gpu_it_says_so_in_one_line(tmp_path):
    done = run_script("--out", str(tmp_path / "gpu.md"))
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("benchmarks/gpu.py needs a CUDA GPU")
    assert not (tmp_path / "gpu.md").exists()
