"""Registration with anomalib: stock command, get_model, benchmark look-up, zero cost when unused."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from anomalib.data import AnomalibDataModule, get_datamodule
from anomalib.models import AnomalibModule, EfficientAd, Padim, get_model
from jsonargparse._typehints import resolve_class_path_by_name
from jsonargparse._util import import_object

import anomalib_rgi
from anomalib_rgi import Rgi, RgiTextures

from .conftest import TINY_DATA, TINY_MODEL

ANOMALIB = Path(sys.executable).with_name("anomalib")


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("name", ["rgi", "Rgi", "RGI"])
def test_get_model_finds_rgi(name):
    assert isinstance(get_model(name, **TINY_MODEL), Rgi)


def test_benchmark_style_lookups_find_model_and_data():
    assert isinstance(get_model({"class_path": "Rgi", "init_args": TINY_MODEL}), Rgi)
    assert isinstance(get_datamodule({"class_path": "RgiTextures", "init_args": {"category": "gravel"}}), RgiTextures)


@pytest.mark.parametrize(
    ("base", "name", "expected"),
    [
        (AnomalibModule, "rgi", Rgi),
        (AnomalibModule, "padim", Padim),
        (AnomalibModule, "efficient_ad", EfficientAd),
        (AnomalibDataModule, "rgi_textures", RgiTextures),
    ],
)
def test_cli_names_resolve_like_get_model(base, name, expected):
    assert import_object(resolve_class_path_by_name(base, name)) is expected


def test_cli_name_patch_leaves_other_classes_alone():
    class Unrelated:
        pass

    assert resolve_class_path_by_name(Unrelated, "unrelated") == "unrelated"


def test_a_fresh_interpreter_registers_on_first_anomalib_import():
    result = _python("from anomalib.models import get_model; print(type(get_model('rgi')).__name__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("Rgi")


def test_registration_can_be_switched_off():
    code = (
        "from anomalib.models import get_model\n"
        "try:\n    get_model('rgi')\nexcept Exception as e:\n    print('refused', type(e).__name__)"
    )
    result = _python(code, ANOMALIB_RGI_AUTOREGISTER="0")
    assert "refused UnknownModelError" in result.stdout, result.stdout + result.stderr


def test_programs_that_never_import_anomalib_load_nothing_of_it():
    code = "import sys, json; print(sorted(m for m in sys.modules if 'anomalib' in m or m.startswith('torch')))"
    result = _python(code)
    assert result.stdout.strip() == "['_anomalib_rgi_autoload']", result.stdout
    timing = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True, timeout=60, check=True
    )
    line = next(line for line in timing.stderr.splitlines() if line.endswith("_anomalib_rgi_autoload"))
    cumulative_us = int(line.split("|")[1])
    assert cumulative_us < 20_000, line


def test_register_is_idempotent():
    anomalib_rgi.register()
    anomalib_rgi.register()
    assert resolve_class_path_by_name(AnomalibModule, "rgi").endswith(".Rgi")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ANOMALIB), *args], capture_output=True, text=True, cwd=cwd, timeout=600, check=False, env=os.environ.copy()
    )


def _tiny_arguments(root: Path, model_name: str) -> list[str]:
    arguments = ["--model", model_name, "--data", "RgiTextures", "--data.root", str(root), "--data.category", "grass"]
    arguments += [f"--data.{key}={value}" for key, value in TINY_DATA.items()]
    arguments += [f"--model.{key}={value}" for key, value in TINY_MODEL.items()]
    return arguments


@pytest.mark.slow
def test_stock_anomalib_command_trains_tests_and_predicts(tiny_data_root, tmp_path):
    train = _cli("train", *_tiny_arguments(tiny_data_root, "rgi"), "--default_root_dir", str(tmp_path), cwd=tmp_path)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert "pixel_Dice" in train.stdout
    checkpoint = next(tmp_path.rglob("model.ckpt"))
    test = _cli("test", *_tiny_arguments(tiny_data_root, "Rgi"), "--ckpt_path", str(checkpoint), cwd=tmp_path)
    assert test.returncode == 0, test.stdout[-3000:] + test.stderr[-3000:]
    assert "pixel_AUROC" in test.stdout
    assert "pixel_Dice" in test.stdout
    images = tiny_data_root / "grass" / "test" / "hole"
    arguments = ["--model", "anomalib_rgi.Rgi", *[f"--model.{key}={value}" for key, value in TINY_MODEL.items()]]
    predict = _cli("predict", *arguments, "--data", str(images), "--ckpt_path", str(checkpoint), cwd=tmp_path)
    assert predict.returncode == 0, predict.stdout[-3000:] + predict.stderr[-3000:]
    export_root = tmp_path / "exported"
    for export_type in ("onnx", "openvino", "torch"):
        export = _cli(
            "export",
            "--model",
            "rgi",
            "--export_type",
            export_type,
            "--ckpt_path",
            str(checkpoint),
            "--export_root",
            str(export_root),
            cwd=tmp_path,
        )
        assert export.returncode == 0, export.stdout[-3000:] + export.stderr[-3000:]
    assert next(export_root.rglob("model.onnx")).stat().st_size > 0
    assert next(export_root.rglob("model.xml")).stat().st_size > 0
    assert next(export_root.rglob("model.pt")).stat().st_size > 0


@pytest.mark.slow
def test_stock_anomalib_command_applies_its_seed(tiny_data_root, tmp_path):
    """anomalib 2.7's command declares seed_everything but never applied it: runs of one config differed."""

    def train(seed: int, name: str) -> dict:
        arguments = [*_tiny_arguments(tiny_data_root, "rgi"), "--seed_everything", str(seed)]
        result = _cli("train", *arguments, "--default_root_dir", str(tmp_path / name), cwd=tmp_path)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        checkpoint = next((tmp_path / name).rglob("model.ckpt"))
        return torch.load(checkpoint, weights_only=False)["state_dict"]

    first, again, other = train(0, "first"), train(0, "again"), train(1, "other")
    assert all(torch.equal(value, again[name]) for name, value in first.items())
    assert not torch.equal(first["model.generator.net.0.weight"], other["model.generator.net.0.weight"])


@pytest.mark.slow
def test_shipped_benchmark_grid_runs_and_reports_dice(tiny_data_root, tmp_path):
    """``configs/benchmark/rgi.yaml`` as shipped (its grid of settings), at tiny sizes and on one category."""
    shipped = yaml.safe_load((Path(__file__).parents[1] / "configs/benchmark/rgi.yaml").read_text())
    benchmark = shipped["benchmark"]
    prior = TINY_MODEL["prior"]
    benchmark["model"]["init_args"].update({**TINY_MODEL, "prior": prior, "select_epoch_every": 1})
    benchmark["data"]["init_args"].update({**TINY_DATA, "root": str(tiny_data_root), "category": {"grid": ["grass"]}})
    config = tmp_path / "benchmark.yaml"
    config.write_text(yaml.safe_dump(shipped))
    result = _cli("benchmark", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    with next(tmp_path.rglob("results.csv")).open() as stream:
        rows = list(csv.DictReader(stream))
    assert {"pixel_Dice", "pixel_AUROC", "pixel_PerImageBestDice"} <= set(rows[0])
    settings = sorted(
        (float(row["model.init_args.finetune_steps"]), row["model.init_args.anomaly_map"]) for row in rows
    )
    maps = ["best_on_validation", "mask"]
    assert settings == [(steps, name) for steps in (0, 50) for name in maps], "a row per setting"
    assert {row["model.init_args.mask_floor_quantile"] for row in rows} == {"0.9"}, "the map of configs/rrgi.yaml"


@pytest.mark.slow
def test_shipped_configs_parse(tmp_path):
    for config in sorted(Path(__file__).parents[1].glob("configs/*.yaml")):
        result = _cli("train", "--config", str(config), "--print_config", cwd=tmp_path)
        assert result.returncode == 0, f"{config}: {result.stderr[-2000:]}"
        assert "anomalib_rgi" in result.stdout
