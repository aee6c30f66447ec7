"""Which rule for choosing the map on validation carries over best to images it did not choose on?

    python research/probes/selection_rules.py CACHE.pt=CKPT [...] --data-root R [--splits 10] [--seed 0]

Only validation halves are read (cache_inversions.py ``--splits val``): the test halves stay unseen.
For each prior, the validation half is cut in two at random many times, each defect kind and the good
images split evenly; every rule chooses among the model's candidates on one piece and the choice is
scored on the other (pooled pixel AUROC and dataset-level Dice at the best threshold), both ways round.
A second check leaves one defect kind out of the choice and scores the choice on that kind's images
beside the good ones. Rules (all after the floors are learned as a fit learns them):

- ``dice_near_best_auroc`` (the product's rule): best Dice among the candidates within 0.01 of the best
  pixel AUROC.
- ``auroc_near_best_dice``: of those, the best pixel AUROC among those within 0.01 of their best Dice.
- ``sum``: best pixel AUROC + Dice.
- ``lightest``: of those ``auroc_near_best_dice`` admits, the smallest total added weight.
- ``auroc``: best pixel AUROC alone.
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch
from select_map import parts_of, prepared_model

from anomalib_rgi.metrics import ranking_quality
from anomalib_rgi.models.rgi.anomaly_map import ADDED_PARTS, scored_as, weigh
from anomalib_rgi.models.rgi.map_selection import (
    DICE_TOLERANCE,
    PIXEL_AUROC_TOLERANCE,
    choose_settings,
    lightest_near_best,
    validation_pixel_quality,
)


def near_best_auroc(auroc: list[float]) -> list[int]:
    return [i for i, value in enumerate(auroc) if value >= max(auroc) - PIXEL_AUROC_TOLERANCE]


def near_best_both(auroc: list[float], dice: list[float]) -> list[int]:
    eligible = near_best_auroc(auroc)
    best_dice = max(dice[i] for i in eligible)
    return [i for i in eligible if dice[i] >= best_dice - DICE_TOLERANCE]


RULES = {
    "dice_near_best_auroc": lambda auroc, dice, *_: max(near_best_auroc(auroc), key=dice.__getitem__),
    "auroc_near_best_dice": lambda auroc, dice, *_: max(near_best_both(auroc, dice), key=auroc.__getitem__),
    "sum": lambda auroc, dice, *_: max(range(len(auroc)), key=lambda i: auroc[i] + dice[i]),
    "lightest": lightest_near_best,  # the product's rule
    "auroc": lambda auroc, *_: max(range(len(auroc)), key=auroc.__getitem__),
}


def subset(parts: dict, data: dict, rows: np.ndarray) -> list:
    index = torch.as_tensor(rows)
    return [({name: part[index] for name, part in parts.items()}, data["gt"][index], data["label"][index])]


def choices(kept: list, start: dict, candidates: list[dict], floor_quantile: float) -> dict[str, dict]:
    """Each rule's chosen settings on ``kept`` (floors learned as the product learns them)."""
    floored, _, _ = choose_settings(kept, start, [], floor_quantile)
    options = [scored_as(floored | weights, weights) for weights in candidates]
    auroc, dice = map(list, zip(*(validation_pixel_quality(kept, option) for option in options), strict=True))
    weight = [sum(weights.get(part, 0.0) for part in ADDED_PARTS) for weights in candidates]
    return {name: options[rule(auroc, dice, weight)] for name, rule in RULES.items()}


def quality(kept: list, settings: dict) -> tuple[float, float]:
    [(parts, gt, _)] = kept
    return ranking_quality(weigh(parts, settings).flatten(), gt.flatten())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("fits", nargs="+", help="CACHE.pt=CKPT")
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    parser.add_argument("--floor-quantile", type=float, default=0.9)
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("| prior | check | " + " | ".join(RULES) + " |")
    print("|---|---|" + "---|" * len(RULES))
    overall: dict[str, list] = {name: [] for name in RULES}
    for fit in args.fits:
        cache_path, checkpoint = fit.split("=")
        cache = torch.load(cache_path, weights_only=False)["val"]
        category = next(c for c in ("brick", "fabric", "grass", "gravel") if c in cache_path)
        model = prepared_model(checkpoint, args.data_root, category)
        amap = model.model.anomaly_map
        parts = parts_of(model, cache)
        start = dict(amap.settings) | {"mask_floor": 0.0}
        kinds = np.array(cache["kind"])
        draw = random.Random(args.seed)
        halves: dict[str, list] = {name: [] for name in RULES}
        for _ in range(args.splits):
            first = []
            for kind in sorted(set(kinds)):
                rows = list(np.flatnonzero(kinds == kind))
                draw.shuffle(rows)
                first += rows[: len(rows) // 2]
            first = np.array(sorted(first))
            second = np.setdiff1d(np.arange(len(kinds)), first)
            for chosen_on, scored_on in ((first, second), (second, first)):
                picked = choices(subset(parts, cache, chosen_on), start, amap.candidates, args.floor_quantile)
                for name, settings in picked.items():
                    halves[name].append(quality(subset(parts, cache, scored_on), settings))
        blind: dict[str, list] = {name: [] for name in RULES}
        for kind in sorted(set(kinds) - {"good"}):
            without = subset(parts, cache, np.flatnonzero(kinds != kind))
            scored = subset(parts, cache, np.flatnonzero((kinds == kind) | (kinds == "good")))
            for name, settings in choices(without, start, amap.candidates, args.floor_quantile).items():
                blind[name].append(quality(scored, settings))
        label = cache_path.rsplit("/", 1)[-1].removesuffix(".pt")
        for check, table in (("other half", halves), ("kind left out", blind)):
            cells = []
            for name in RULES:
                auroc, dice = np.array(table[name]).mean(axis=0)
                overall[name].append((check, auroc, dice))
                cells.append(f"{auroc:.4f} / {dice:.4f}")
            print(f"| {label} | {check} | " + " | ".join(cells) + " |", flush=True)
    for check in ("other half", "kind left out"):
        cells = []
        for name in RULES:
            rows = np.array([(a, d) for c, a, d in overall[name] if c == check])
            cells.append(f"{rows[:, 0].mean():.4f} / {rows[:, 1].mean():.4f}")
        print(f"| mean | {check} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
