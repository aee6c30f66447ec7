"""scripts/train_seeds.py: several seeds through anomalib's own commands, the best-validating one kept and tested."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from anomalib_rgi import Rgi

from .conftest import TINY_DATA, TINY_MODEL

SCRIPT = Path(__file__).parents[1] / "scripts" / "train_seeds.py"


def _train_seeds(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900, check=False
    )


def _tiny_config(tmp_path: Path, root: Path, **model: object) -> Path:
    init_args = {**TINY_MODEL, "max_epochs": 2, "select_epoch_every": 1, **model}
    lines = ["model:", "  class_path: anomalib_rgi.Rgi", "  init_args:"]
    lines += [f"    {key}: {value}" for key, value in init_args.items()]
    lines += [
        "data:",
        "  class_path: anomalib_rgi.RgiTextures",
        "  init_args:",
        f"    root: {root}",
        "    category: grass",
    ]
    lines += [f"    {key}: {value}" for key, value in TINY_DATA.items()]
    lines += ["trainer:", "  accelerator: cpu", "  logger: false"]
    config = tmp_path / "tiny.yaml"
    config.write_text("\n".join(lines) + "\n")
    return config


@pytest.mark.slow
def test_the_best_validating_seed_is_kept_and_tested(tiny_data_root, tmp_path):
    config, runs = _tiny_config(tmp_path, tiny_data_root), tmp_path / "runs"
    result = _train_seeds("--config", str(config), "--seeds", "0", "1", "--root", str(runs))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    rows = list(csv.DictReader((runs / "seeds.csv").open()))
    assert [int(row["seed"]) for row in rows] == [0, 1]
    scores = [float(row["val_pixel_F1Max"]) for row in rows]
    assert scores[0] != scores[1], "two seeds that validate alike cannot show which one is kept"
    kept = [row for row in rows if row["kept"] == "True"]
    assert len(kept) == 1
    assert float(kept[0]["val_pixel_F1Max"]) == max(scores)
    assert (runs / "best.ckpt").read_bytes() == Path(kept[0]["checkpoint"]).read_bytes()
    assert Rgi.kept_validation(runs / "best.ckpt")["val_pixel_F1Max"] == max(scores)
    assert list((runs / "test").rglob("images")), "anomalib test ran on the kept prior and wrote its pictures"
    assert not list(runs.rglob("*.partial"))


@pytest.mark.slow
def test_failing_seeds_are_reported_and_no_result_is_written(tiny_data_root, tmp_path):
    # select_epoch_every must divide max_epochs: every fit stops before training.
    config, runs = _tiny_config(tmp_path, tiny_data_root, max_epochs=3, select_epoch_every=2), tmp_path / "runs"
    result = _train_seeds("--config", str(config), "--seeds", "0", "1", "--root", str(runs))
    assert result.returncode == 1
    for seed in (0, 1):
        assert f"left out: seed {seed}: anomalib fit exited with 1" in result.stdout
        assert "select_epoch_every must be 0" in (runs / f"seed-{seed}" / "fit.log").read_text()
    assert not (runs / "seeds.csv").exists()
    assert not (runs / "best.ckpt").exists()


@pytest.mark.parametrize("seeds", [["0"], ["3", "3"]])
def test_one_seed_is_refused(tmp_path, seeds):
    config = tmp_path / "c.yaml"
    config.write_text("model: {}\n")
    result = _train_seeds("--config", str(config), "--seeds", *seeds)
    assert result.returncode == 2
    assert "at least two different seeds" in result.stderr


def test_a_missing_config_is_refused(tmp_path):
    result = _train_seeds("--config", str(tmp_path / "none.yaml"), "--seeds", "0", "1")
    assert result.returncode == 2
    assert "none.yaml: no such file" in result.stderr
