"""Train the GAN prior with several seeds and keep the one that validates best, then test it.

Which seed a prior comes from moves its Dice as much as the epoch does (docs/method.md; R-RGI with
200 + 50 steps: the best-validating of 5 seeds gave test Dice 0.477 on gravel,
0.680 on brick, against 0.447 and 0.653 on average over the seeds, the epoch chosen in both).
``select_epoch_every`` chooses the epoch inside one fit; this loop over ``--seed_everything`` chooses
the seed, with anomalib's own commands:

    anomalib fit --config <config> --seed_everything <seed> --default_root_dir <root>/seed-<seed>   (each seed)
    anomalib test --config <config> --ckpt_path <best seed's model.ckpt> --default_root_dir <root>/test

The choice reads only each fit's validation Dice (``val_pixel_F1Max`` of the epoch the checkpoint
holds, recorded by Rgi), never the test set. ``<root>/seeds.csv`` lists every seed's figure and
checkpoint; ``<root>/best.ckpt`` is a copy of the chosen one.

    python scripts/train_seeds.py --config configs/rrgi.yaml --seeds 0 1 2 --root results/seeds
    python scripts/train_seeds.py --config configs/rrgi.yaml --seeds 0 1 2 -- --data.init_args.category gravel

Arguments after ``--`` go to both anomalib commands. A seed whose fit fails (for example a
``ModeCollapseError``) is reported and left out; the script fails only when no seed gives a prior.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
from pathlib import Path

from anomalib_rgi import Rgi

ANOMALIB = Path(sys.executable).with_name("anomalib")


def fit_seed(config: Path, seed: int, root: Path, extra: list[str]) -> Path:
    """Fit one seed with ``anomalib fit`` and return its final checkpoint.

    Raises:
        RuntimeError: If the fit fails or leaves no checkpoint; the message names its log.
    """
    folder = root / f"seed-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "fit.log"
    command = [str(ANOMALIB), "fit", "--config", str(config), "--seed_everything", str(seed)]
    command += ["--default_root_dir", str(folder), *extra]
    with log.open("w") as stream:
        result = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, check=False)
    checkpoints = sorted(folder.glob("**/latest/weights/lightning/model.ckpt"))
    if result.returncode != 0 or len(checkpoints) != 1:
        msg = f"seed {seed}: anomalib fit exited with {result.returncode} ({len(checkpoints)} checkpoints); see {log}"
        raise RuntimeError(msg)
    return checkpoints[0].resolve()  # not the `latest` link, which a later run in the same root moves


def main(argv: list[str] | None = None) -> int:
    """Fit every seed, keep the best-validating prior, test it; return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="an anomalib config with an Rgi model")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="seeds to train (at least two)")
    parser.add_argument("--root", type=Path, default=Path("results/seeds"), help="folder for the runs")
    args = parser.parse_args(own)
    if not args.config.is_file():
        parser.error(f"--config {args.config}: no such file")
    if len(set(args.seeds)) < 2:
        parser.error(f"--seeds {args.seeds}: give at least two different seeds to choose from")
    if not ANOMALIB.is_file():
        parser.error(f"the anomalib command is not installed beside {sys.executable}")

    rows = []
    for seed in dict.fromkeys(args.seeds):
        try:
            checkpoint = fit_seed(args.config, seed, args.root, extra)
        except RuntimeError as error:
            print(f"left out: {error}", flush=True)
            continue
        kept = Rgi.kept_validation(checkpoint)
        if kept is None:
            print(
                f"seed {seed}: the fit recorded no validation Dice (validation images without defect masks?): "
                "the seeds cannot be compared. Use a validation split with masks (e.g. val_split_mode from_test).",
                flush=True,
            )
            return 2
        rows.append(
            {"seed": seed, "epoch": kept["epoch"], "val_pixel_F1Max": kept["val_pixel_F1Max"], "checkpoint": checkpoint}
        )
        print(
            f"seed {seed}: epoch {kept['epoch']}, validation Dice (best threshold) {kept['val_pixel_F1Max']:.3f}",
            flush=True,
        )
    if not rows:
        print("no seed gave a prior; see the fit.log of each seed", flush=True)
        return 1

    best = max(rows, key=lambda row: row["val_pixel_F1Max"])
    table = args.root / "seeds.csv"
    partial = table.with_suffix(".csv.partial")
    with partial.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=[*rows[0], "kept"])
        writer.writeheader()
        writer.writerows({**row, "kept": row is best} for row in rows)
    partial.replace(table)
    shutil.copyfile(best["checkpoint"], args.root / "best.ckpt.partial")
    (args.root / "best.ckpt.partial").replace(args.root / "best.ckpt")
    print(f"kept seed {best['seed']} ({best['checkpoint']}); testing it", flush=True)
    command = [str(ANOMALIB), "test", "--config", str(args.config), "--ckpt_path", str(args.root / "best.ckpt")]
    command += ["--default_root_dir", str(args.root / "test"), *extra]
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
