"""`thinkpix demo --quick` end to end on the shipped Shapes base (the path `make demo` takes, shortened)."""

import json

import pytest
from PIL import Image

from thinkpix.cli import main
from thinkpix.pipelines import SHIPPED


@pytest.mark.skipif(not (SHIPPED["shapes-t2i"] / "model_index.json").is_file(), reason="shipped base not built")
def test_quick_demo_writes_a_report_with_scores(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "| base |" in table and "RSR" in table
    assert f"report: {tmp_path / 'report.md'}" in table  # the last thing printed says where the report is
    report = (tmp_path / "report.md").read_text()
    assert "Shapes-GenEval" in report and "routing.png" in report
    assert "guidance 4 at noise levels 0-0.8" in report  # the shipped base's guidance interval
    for name in ("routing.png", "base_grid.png", "rsr_grid.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "each of the 12 prompts" in report  # every prompt of the run is in the grids, captioned
    with Image.open(tmp_path / "base_grid.png") as grid:
        assert grid.width >= 8 * 128  # 8 columns of 32-px tiles upscaled to 128 px
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert all(0.0 <= row["overall"] <= 1.0 for row in scores.values())
    assert (tmp_path / "finetune" / "rsr" / "rsr_weights.safetensors").is_file()
