"""Good parts only: the epoch and thresholds learned without real defects (synthetic anomalies or good images).

A factory line often starts with defect-free parts alone. anomalib's answer is
``val_split_mode: synthetic``: part of the training images become a validation set, half of them
with Perlin-noise anomalies and their masks. Rgi needs those masks to learn its thresholds and, with
``select_epoch_every``, to choose the epoch. How much does that cost against validating on real
defects? For each category the preset is fitted three times with ``anomalib fit`` (as
``scripts/train_seeds.py`` runs it): once with the shipped split (half of the real defective test
crops validate), once with ``--data.init_args.val_split_mode synthetic --data.init_args.val_split_ratio
<r>``, and once validating on defect-free training images alone (``val_split_mode from_train``: no
masks, so ``select_epoch_every 0`` keeps the last epoch, and anomalib's threshold falls back to the
highest normal score). All priors are then tested on the SAME real test half through ``Engine.test``; one JSON row
per fit: the test metrics (``pixel_Dice`` at the learned threshold is the factory's figure), the kept
epoch and its validation Dice, the learned thresholds, the fit time. The same prior is then validated
on the real half (``Engine.validate`` learns thresholds and normalisation again) and tested once more
(``real_thresholds``): the gap between the two rows of one prior is the threshold's source alone, the
gap between the priors' threshold-free figures (pixel AUROC, ``pixel_F1Max``) is what the smaller
training set and the epoch chosen on synthetic anomalies cost. A fit already under ``--root`` is reused.

python experiments/synthetic_validation.py --config configs/rgi_fast.yaml --categories brick gravel grass \
    --root results/synthetic-validation --out docs/results/synthetic-validation-<date>/rows.jsonl
python experiments/synthetic_validation.py --summarise docs/results/synthetic-validation-<date>/rows.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml
from anomalib.engine import Engine

from anomalib_rgi import Rgi, RgiTextures

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from train_seeds import fit_seed

SOURCES = ["real", "synthetic", "good"]


def data_arguments(config: Path, category: str) -> dict:
    """The config's datamodule arguments, for ``category``."""
    return {**yaml.safe_load(config.read_text())["data"]["init_args"], "category": category}


def score_on_the_real_half(checkpoint: Path, config: Path, category: str) -> dict[str, dict[str, float]]:
    """Test a prior on the shipped split's test half with its own thresholds, then with real-defect ones."""
    datamodule = RgiTextures(**data_arguments(config, category))
    model = Rgi.load_from_checkpoint(checkpoint, weights_only=True)
    with tempfile.TemporaryDirectory() as work:
        engine = Engine(default_root_dir=work, logger=False, accelerator="cpu", devices=1)

        def test() -> dict[str, float]:
            (metrics,) = engine.test(model=model, datamodule=datamodule, verbose=False)
            return {
                **{key: round(float(value), 4) for key, value in metrics.items()},
                "image_threshold": round(float(model.post_processor.image_threshold), 4),
                "pixel_threshold": round(float(model.post_processor.pixel_threshold), 4),
            }

        own = test()
        engine.validate(model=model, datamodule=datamodule, verbose=False)  # learns thresholds on real defects
        return {"own_thresholds": own, "real_thresholds": test()}


def summarise(rows_path: Path) -> None:
    """Print the rows as a markdown table, test half, one line per fit."""
    print(
        "| category | validation | kept epoch | pixel AUROC | Dice, best threshold | Dice at its threshold "
        "| Dice at real-defect thresholds | image AUROC (own / real) | image F1 at its threshold |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for line in rows_path.read_text().splitlines():
        row = json.loads(line)
        own, real = row["own_thresholds"], row["real_thresholds"]
        epoch = row["kept"]["epoch"] if row["kept"] else "last"
        print(
            f"| {row['category']} | {row['validation']} | {epoch} | {own['pixel_AUROC']:.3f} "
            f"| {own['pixel_F1Max']:.3f} | {own['pixel_Dice']:.3f} | {real['pixel_Dice']:.3f} "
            f"| {own['image_AUROC']:.3f} / {real['image_AUROC']:.3f} | {own['image_F1Score']:.3f} |"
        )


def main() -> None:
    """Fit (or reuse) each category with each validation source; append one JSON row per fit."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/rgi_fast.yaml"))
    parser.add_argument("--categories", nargs="+", default=["brick", "gravel", "grass"])
    parser.add_argument("--sources", nargs="+", default=SOURCES, choices=SOURCES)
    parser.add_argument("--split-ratio", type=float, default=0.2, help="share of the training images that validate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=Path("results/synthetic-validation"))
    parser.add_argument("--out", type=Path, help="JSON lines file the rows are appended to")
    parser.add_argument("--summarise", type=Path, help="print a rows file as a table instead of fitting")
    parser.add_argument("extra", nargs="*", help="more anomalib arguments for the fits (after --)")
    args = parser.parse_args()
    if args.summarise:
        summarise(args.summarise)
        return
    if args.out is None:
        parser.error("--out is required to fit")
    for category in args.categories:
        for source in args.sources:
            extra = ["--data.init_args.category", category, *args.extra]
            if source != "real":
                extra += ["--data.init_args.val_split_mode", "synthetic" if source == "synthetic" else "from_train"]
                extra += ["--data.init_args.val_split_ratio", str(args.split_ratio)]
            if source == "good":  # no masks to choose an epoch with
                extra += ["--model.init_args.select_epoch_every", "0"]
            folder = args.root / f"{category}-{source}"
            done = sorted(folder.glob("seed-*/**/latest/weights/lightning/model.ckpt"))
            started = time.perf_counter()
            checkpoint = done[0].resolve() if done else fit_seed(args.config, args.seed, folder, extra)
            row = {
                "category": category,
                "validation": source,
                "split_ratio": None if source == "real" else args.split_ratio,
                "seed": args.seed,
                "config": str(args.config),
                "checkpoint": str(checkpoint),
                "fit_seconds": None if done else round(time.perf_counter() - started),
                "kept": Rgi.kept_validation(checkpoint),
                **score_on_the_real_half(checkpoint, args.config, category),
            }
            with args.out.open("a") as stream:
                stream.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
