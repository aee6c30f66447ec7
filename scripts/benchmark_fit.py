"""Time a config's fit stage by stage, and test it: what ``anomalib train --config <config>`` costs.

For each category and seed, builds the config's model and datamodule as ``anomalib train`` does,
trains and tests them through anomalib's Engine, and prints the wall time of each stage beside the
test figures:

- ``feature parts``: the ImageNet feature prior's fit, before the first GAN epoch;
- ``GAN epochs``: every training epoch (with the added parts' calibration after each);
- ``validations``: every validation of the fit (inversions, thresholds, the map's choice);
- ``test``: the test half's inversions and metrics;
- ``fit``: everything ``engine.fit`` does, the three above included.

    python scripts/benchmark_fit.py --config configs/rgi.yaml --categories brick grass --seeds 0 1 --out <folder>
    python scripts/benchmark_fit.py --config configs/rgi.yaml --categories brick --tiny --out <folder>  # smoke test

Writes ``rows.json`` and ``table.md`` under ``--out`` (each run's own folder beside them); a rerun
into the same folder refuses to overwrite them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import yaml
from anomalib.engine import Engine
from lightning.pytorch import Callback, seed_everything

from anomalib_rgi import Rgi, RgiTextures
from anomalib_rgi.data.textures import categories
from anomalib_rgi.reporting import FIT_METRICS, machine, markdown_table

STAGES = ("feature parts", "GAN epochs", "validations", "test", "fit")


class StageTimes(Callback):
    """Wall seconds of a fit's stages (:data:`STAGES`), summed over their repeats."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._started: dict[str, float] = {}

    def _start(self, stage: str) -> None:
        self._started[stage] = time.perf_counter()

    def _stop(self, stage: str) -> None:
        if stage in self._started:
            self.seconds[stage] += time.perf_counter() - self._started.pop(stage)

    # Registered before the model's own callbacks: its train start runs before the feature prior's fit.
    def on_train_start(self, *_: object) -> None:
        self._start("feature parts")

    def on_train_epoch_start(self, *_: object) -> None:
        self._stop("feature parts")
        self._start("GAN epochs")

    def on_train_epoch_end(self, *_: object) -> None:
        self._stop("GAN epochs")

    def on_validation_start(self, *_: object) -> None:
        self._stop("GAN epochs")  # Lightning validates inside the epoch, before its end hooks
        self._start("validations")

    def on_validation_end(self, *_: object) -> None:
        self._stop("validations")

    def on_test_start(self, *_: object) -> None:
        self._start("test")

    def on_test_end(self, *_: object) -> None:
        self._stop("test")


def instantiate(value: object) -> object:
    """A config's ``{class_path, init_args}`` value as the object ``anomalib train`` would build from it."""
    if not (isinstance(value, dict) and "class_path" in value):
        return value
    module, _, name = value["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**value.get("init_args", {}))


def build(config: dict, category: str, version: int, root: Path, tiny: bool) -> tuple[Rgi, RgiTextures]:
    """The config's model and datamodule for ``category``, as ``anomalib train --config`` builds them.

    Raises:
        ValueError: If the config's model is not Rgi or its data not RgiTextures.

    """
    model_config, data_config = config.get("model", {}), config.get("data", {})
    if model_config.get("class_path") not in {"anomalib_rgi.Rgi", "Rgi"}:
        msg = f"--config must hold an anomalib_rgi.Rgi model, got {model_config.get('class_path')!r}."
        raise ValueError(msg)
    if data_config.get("class_path") not in {"anomalib_rgi.RgiTextures", "RgiTextures"}:
        msg = f"--config must read anomalib_rgi.RgiTextures, got {data_config.get('class_path')!r}."
        raise ValueError(msg)
    model_args = {name: instantiate(value) for name, value in model_config.get("init_args", {}).items()}
    data_args = {**data_config.get("init_args", {}), "category": category, "version": version, "root": str(root)}
    if tiny:
        model_args |= {"max_epochs": 2, "select_epoch_every": 1, "steps": min(model_args.get("steps", 10), 2)}
        data_args |= {"num_train": 32, "num_test_good": 4, "num_test_defective": 12 if version == 1 else None}
    return Rgi(**model_args), RgiTextures(**data_args)


def run(config: dict, category: str, seed: int, args: argparse.Namespace) -> dict:
    """Fit and test one category at one seed; return its stage times and test figures."""
    seed_everything(seed, workers=True)
    model, datamodule = build(config, category, args.data_version, args.data_root, args.tiny)
    datamodule.prepare_data()  # the built-in data is written once, outside the timed fit
    timer = StageTimes()
    folder = args.out / f"{category}-seed{seed}"
    engine = Engine(callbacks=[timer], default_root_dir=folder, accelerator="cpu", devices=1, logger=False)
    started = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    timer.seconds["fit"] = time.perf_counter() - started
    [results] = engine.test(model=model, datamodule=datamodule)
    kept = model._kept_validation or {}  # what the fit recorded (kept_validation reads it)
    return {
        "category": category,
        "seed": seed,
        "anomaly map": kept.get("described", model.hparams.anomaly_map),
        "kept epoch": kept.get("epoch"),
        **{stage: round(timer.seconds.get(stage, 0.0), 1) for stage in STAGES},
        **{metric: round(float(value), 4) for metric, value in sorted(results.items())},
    }


def main(argv: list[str] | None = None) -> int:
    """Time every category and seed; write the rows and the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--categories", nargs="+", default=None, help="default: every category of the version")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--data-version", type=int, default=2, choices=(1, 2))
    parser.add_argument("--data-root", type=Path, default=Path("datasets/rgi_textures"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--tiny", action="store_true", help="2 epochs, 32 crops, 2 steps: checks the script runs")
    parser.add_argument("--out", type=Path, default=Path("results/fit-times"))
    args = parser.parse_args(argv)
    if not args.config.is_file():
        parser.error(f"--config {args.config}: no such file")
    known = categories(args.data_version)
    chosen = args.categories or list(known)
    if unknown := sorted(set(chosen) - set(known)):
        parser.error(f"--categories {unknown}: version {args.data_version} has {list(known)}")
    table, rows_file = args.out / "table.md", args.out / "rows.json"
    if table.exists() or rows_file.exists():
        parser.error(f"{args.out} already holds a table: give another --out")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = yaml.safe_load(args.config.read_text())
    rows = []
    for category in chosen:
        for seed in args.seeds:
            row = run(config, category, seed, args)
            print(json.dumps(row), flush=True)
            rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    header = (
        f"`python scripts/benchmark_fit.py --config {args.config} --data-version {args.data_version}`; "
        f"{machine()}, {torch.get_num_threads()} torch threads. Stage times in seconds."
    )
    columns = ["category", "seed", "kept epoch", *STAGES, *FIT_METRICS, "anomaly map"]
    partial = table.with_suffix(".md.partial")
    partial.write_text(markdown_table(rows, [c for c in columns if any(c in row for row in rows)], header))
    rows_file.write_text(json.dumps(rows, indent=1))
    partial.replace(table)
    print(table.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
