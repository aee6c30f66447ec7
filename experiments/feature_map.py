"""Does the feature distance between input and restoration lift RGI's map on every prior (issue #5)?

For each trained prior (any ``feature_weight``), the feature map's scale is calibrated on the first
32 training crops (``Rgi.model.calibrate_feature_scale``, what a fit with ``feature_weight > 0`` does
after every epoch); each half and scoring method is inverted once, and the anomaly map for every
``--weights`` value is ``mask map + w * scale * feature distance`` (linear in ``w``, so one inversion
serves all weights). One JSON row per prior, half, method and weight: pixel AUROC, best dataset Dice
and pixel AUROC per defect type, as the other experiment scripts report them.

python experiments/feature_map.py --category gravel --checkpoints results/ensemble/gravel-w8-s0-e20.ckpt \
    --methods encoder rrgi --weights 0 0.5 1

``--summarise ROWS``: for rows of priors named ``<category>-...-s<seed>-e<epoch>.ckpt`` (what
``GRID=features bash experiments/gpu_prior_grid.sh`` writes), the test half's mean over seeds per
epoch, and the epoch each seed's validation Dice chooses (what ``select_epoch_every`` keeps), per
prior (the name before ``-s<seed>``), method, feature reference and weight: pixel AUROC / best
dataset Dice (of the chosen epochs: validation and test), the test figures of the seed that
``scripts/train_seeds.py`` would keep (the best-validating chosen epoch; of 3 seeds, averaged over
every 3 of the seeds scored, and of all seeds), foreign material's pixel AUROC and the test image
AUROC (rows written before it was measured show ``-``). A checkpoint named otherwise counts as one
seed with one epoch.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from prior_ensemble import METHODS  # the same scorings as the ensemble experiment

from anomalib_rgi import Rgi
from anomalib_rgi.data.textures import load_test_split, split_defect_types, train_image_paths
from anomalib_rgi.inpainting import load_images
from anomalib_rgi.metrics import map_quality


def scoring_halves(data_root: str, category: str, halves: list[str]) -> dict[str, tuple]:
    """Per half: its test crops ``(N, C, H, W)``, their masks and their defect types."""
    return {
        half: (*load_test_split(data_root, category, half=half), split_defect_types(data_root, category, half=half))
        for half in halves
    }


def prior_with_feature_map(checkpoint: Path, data_root: str, category: str, device: str) -> tuple[Rgi, torch.Tensor]:
    """The prior with the feature map at weight 1, and the first 32 training crops it is calibrated on."""
    model = Rgi.load_from_checkpoint(checkpoint, map_location="cpu", feature_weight=1.0).eval().to(device)
    return model, load_images(train_image_paths(data_root, category, limit=32), model.model.image_size).to(device)


def invert_halves(rgi: torch.nn.Module, halves: dict[str, tuple], settings: dict) -> dict[str, tuple]:
    """Per half: one seeded inversion of its crops, with the crops' masks and defect types."""
    torch.manual_seed(0)
    return {half: (rgi.invert(images, **settings), *rest) for half, (images, *rest) in halves.items()}


def feature_variant_rows(
    rgi: torch.nn.Module,
    train: torch.Tensor,
    inverted: dict[str, tuple],
    variants: list[tuple[dict, Callable[[], None]]],
    weights: list[float],
    row: dict,
    part: str = "restoration",
) -> Iterator[dict]:
    """Rows for variants of the feature distance on one set of inversions (the probe scripts' harness).

    Each variant is its row fields and a function that sets the variant up on ``rgi.feature_distance``;
    the map is then calibrated as ``Rgi`` does and scored at every weight of the feature ``part``
    (``inf``: that part alone) on every half of ``inverted`` (:func:`invert_halves`).
    """
    for fields, set_up in variants:
        set_up()
        scale = rgi.calibrate_feature_scale(train)[part]
        for half, (result, masks, defects) in inverted.items():
            parts = rgi.map_parts(result)
            mask_map, feature_part = parts["mask"], parts[part]
            for weight in weights:
                scores = feature_part if weight == float("inf") else mask_map + weight * feature_part
                quality = map_quality(scores[:, 0].numpy(), masks, defects)
                yield (
                    row | fields | {"feature_weight": weight, "half": half, "feature_scale": round(scale, 4)} | quality
                )


def score(
    model: Rgi, images: torch.Tensor, settings: dict, weights: list[float], features_from: list[str]
) -> dict[tuple[str, float], torch.Tensor]:
    """Anomaly maps ``(N, H, W)`` of one inversion for each feature reference and weight.

    ``"encoder"``: the feature distance is taken to the prior's image at the encoder's latent,
    ``G(E(x))`` (what ``Rgi`` does since session 14); ``"same"``: to this inversion's restoration
    (session 13's map; R-RGI's per-image fine-tuning can learn a defect).
    """
    torch.manual_seed(0)
    result = model.model.invert(images, **settings)
    references = {"same": replace(result, start=result.restored), "encoder": result}
    maps = {}
    for source in features_from:
        parts = model.model.map_parts(references[source])
        mask_map, feature_part = parts["mask"], parts["restoration"]
        maps.update({(source, weight): (mask_map + weight * feature_part)[:, 0].cpu() for weight in weights})
    return maps


def summarise(path: Path) -> None:
    """Print, per category, method and weight: test means per epoch and the validated epoch choice."""
    table = defaultdict(dict)  # (category, prior, method, features from, weight) -> {(seed, epoch, half): row}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        named = re.search(r"([^/]*)-s(\d+)-e(\d+)\.ckpt$", row["checkpoint"])
        prior, seed, epoch = named.groups() if named else ("", row["checkpoint"], 0)
        key = row["category"], prior, row["method"], row.get("features_from", "same"), row["feature_weight"]
        table[key][seed, int(epoch), row["half"]] = row

    def cell(rows: list[dict]) -> str:
        auroc, dice = (np.mean([row[key] for row in rows]) for key in ("pixel_auroc", "best_dataset_dice"))
        return f"{auroc:.3f} / {dice:.3f}"

    print(
        "| category | prior | method | features from | feature weight | test, seed mean per epoch"
        " | epoch chosen on validation: validation | test | seed kept of 3, test | seed kept of all, test"
        " | foreign | image AUROC |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (category, prior, method, features_from, weight), rows in sorted(table.items()):
        epochs_of = defaultdict(set)  # a prior named otherwise has only its own epoch
        for seed, epoch, half in rows:
            if half == "test" and (seed, epoch, "validation") in rows:  # a run cut short may lack one half
                epochs_of[seed].add(epoch)
        per_epoch = ", ".join(
            f"e{epoch} {cell([rows[seed, epoch, 'test'] for seed in epochs_of if epoch in epochs_of[seed]])}"
            for epoch in sorted(set().union(*epochs_of.values()))
        )
        choice = {
            seed: max(epochs, key=lambda epoch: rows[seed, epoch, "validation"]["best_dataset_dice"])
            for seed, epochs in epochs_of.items()
        }
        validation = [rows[seed, epoch, "validation"] for seed, epoch in choice.items()]
        chosen = [rows[seed, epoch, "test"] for seed, epoch in choice.items()]
        foreign = np.mean([row.get("foreign", np.nan) for row in chosen])
        measured = all("image_auroc" in row for row in chosen)
        image = f"{np.mean([row['image_auroc'] for row in chosen]):.3f}" if measured else "-"
        # scripts/train_seeds.py keeps the seed whose chosen epoch validates best: its test figure,
        # averaged over every set of 3 seeds among those scored, and among all of them
        validated = {seed: rows[seed, epoch, "validation"]["best_dataset_dice"] for seed, epoch in choice.items()}
        kept_cells = []
        for count in (3, len(choice)):
            kept_seeds = [max(seeds, key=validated.get) for seeds in combinations(sorted(choice), count)]
            kept_cells.append(cell([rows[seed, choice[seed], "test"] for seed in kept_seeds]) if kept_seeds else "-")
        kept = " | ".join(kept_cells)
        cells = f"{per_epoch} | {cell(validation)} | {cell(chosen)} | {kept} | {foreign:.2f} | {image}"
        print(f"| {category} | {prior} | {method} | {features_from} | {weight:g} | {cells} |")


def main() -> None:
    """Score each prior with and without the feature map; print one JSON row each."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summarise", type=Path, metavar="ROWS", help="summarise rows written before; no scoring")
    parser.add_argument("--category")
    parser.add_argument("--checkpoints", nargs="+", type=Path, default=[])
    parser.add_argument("--halves", nargs="+", default=["validation", "test"], choices=("validation", "test"))
    parser.add_argument("--methods", nargs="+", default=["encoder", "rrgi"], choices=sorted(METHODS))
    parser.add_argument("--weights", nargs="+", type=float, default=[0.0, 0.5, 1.0])
    parser.add_argument(
        "--features-from",
        nargs="+",
        default=["encoder"],
        choices=("same", "encoder"),
        help="what the feature distance compares the input with: the method's restoration, G(E(x)), or both",
    )
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.summarise:
        summarise(args.summarise)
        return
    if not args.category or not args.checkpoints:
        parser.error("--category and --checkpoints are required (or --summarise ROWS)")
    missing = [str(path) for path in args.checkpoints if not path.is_file()]
    if missing:
        parser.error(f"no such checkpoint: {', '.join(missing)}")
    if any(weight < 0 for weight in args.weights):
        parser.error("--weights must be 0 or positive")
    halves = scoring_halves(args.data_root, args.category, args.halves)
    for checkpoint in args.checkpoints:
        model, train = prior_with_feature_map(checkpoint, args.data_root, args.category, args.device)
        scale = model.model.calibrate_feature_scale(train)["restoration"]
        for half, (images, masks, defects) in halves.items():
            for method in args.methods:
                for (features_from, weight), maps in score(
                    model, images.to(args.device), METHODS[method], args.weights, args.features_from
                ).items():
                    row = {
                        "category": args.category,
                        "checkpoint": str(checkpoint),
                        "half": half,
                        "method": method,
                        "feature_weight": weight,
                        "features_from": features_from,
                        "feature_scale": round(scale, 4),
                        **map_quality(maps.numpy(), masks, defects),
                    }
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
