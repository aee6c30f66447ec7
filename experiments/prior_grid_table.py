"""Markdown table of prior_grid.py rows: per category, prior and scored epoch, the mean over seeds.

Cells are pixel AUROC / best dataset Dice for each half and method, then the test half's pixel AUROC
on foreign material (the defect type RGI misses on grass) at the encoder's start.

``--selection``: instead, how well the validation half picks priors. Per category, the Spearman rank
correlation of each method's validation Dice with R-RGI's test Dice over all (prior, seed, epoch); the
(prior, seed, epoch) with the best validation R-RGI Dice and its test row; and, for every (prior, seed)
scored at several epochs, the test Dice gained by taking the epoch that validates best instead of the last.

``--choice``: what a user would get, per category, prior and method, as test pixel AUROC / best Dice averaged
over seeds: training for E epochs and keeping the last; validating at every scored epoch up to E and
keeping the best (``Rgi(select_epoch_every=...)``, chosen by the method's own validation Dice); and that
choice over k seeds too (the best-validating (seed, epoch), averaged over every k-subset of the seeds).

python experiments/prior_grid_table.py docs/results/prior-grid-gpu-2026-11-26/*.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from itertools import combinations
from pathlib import Path

from scipy.stats import spearmanr

METHODS = {
    "RGI 0 steps, closed form": "RGI 0 steps",
    "RGI (200 Adam steps)": "RGI",
    "R-RGI (+100 fine-tuning steps)": "R-RGI",
}


def prior_name(row: dict) -> str:
    """Short name of a row's prior: width, then what differs from the defaults."""
    name = f"width {row['base_channels']}"
    if row["reconstruction_weight"] != 10:
        name += f", reconstruction {row['reconstruction_weight']:g}"
    if row["flips"]:
        name += ", flips"
    if row["latent_channels"] != 8:
        name += f", {row['latent_channels']} latent channels"
    if row.get("latent_stride", 8) != 8:
        name += f", latent stride {row['latent_stride']}"
    # Rows of the reverted rescaled-corruption patch (docs/results/prior-ensemble-2026-11-27/).
    extra_corruptions = sorted(set(row.get("corruptions", [])) - {"constant", "other_image", "brightness"})
    if extra_corruptions:
        name += f", corruptions + {' + '.join(extra_corruptions)}"
    return name


def index_rows(scored: list[dict]) -> dict[tuple, dict]:
    """Score rows by (category, prior, seed, epoch, half, method); ``--finetune-variants`` keep their full name.

    Raises:
        ValueError: If a key repeats: two trainings of the same prior and seed (two device calls) would
            silently replace each other's rows.
    """
    by_key = {}
    for row in scored:
        method = METHODS.get(row["method"], row["method"])
        key = (row["category"], prior_name(row), row["seed"], row["epoch"], row["half"], method)
        if key in by_key:
            msg = f"rows repeat {key}: pass each training of a prior and seed once (one grid call's rows)"
            raise ValueError(msg)
        by_key[key] = row
    return by_key


def print_selection(scored: list[dict]) -> None:
    """Print how well validation Dice picks priors and epochs (see the module docstring)."""
    by_key = index_rows(scored)
    runs = sorted({key[:4] for key in by_key})
    for category in sorted({run[0] for run in runs}):
        chosen = [run for run in runs if run[0] == category]
        test = [by_key[(*run, "test", "R-RGI")]["best_dataset_dice"] for run in chosen]
        rank = {
            method: spearmanr([by_key[(*run, "validation", method)]["best_dataset_dice"] for run in chosen], test)[0]
            for method in METHODS.values()
        }
        print(f"{category}: {len(chosen)} (prior, seed, epoch); validation Dice vs test R-RGI Dice, Spearman:")
        print("  " + ", ".join(f"{method} {value:.2f}" for method, value in rank.items()))
        best = max(chosen, key=lambda run: by_key[(*run, "validation", "R-RGI")]["best_dataset_dice"])
        row = by_key[(*best, "test", "R-RGI")]
        print(
            f"  best on validation: {best[1]}, seed {best[2]}, epoch {best[3]}: test R-RGI "
            f"{row['pixel_auroc']:.3f} / {row['best_dataset_dice']:.3f}"
        )
    gains = []
    for prior in sorted({run[:3] for run in runs}):
        epochs = [run[3] for run in runs if run[:3] == prior]
        if len(epochs) > 1:
            picked = max(epochs, key=lambda epoch: by_key[(*prior, epoch, "validation", "R-RGI")]["best_dataset_dice"])
            test = {epoch: by_key[(*prior, epoch, "test", "R-RGI")]["best_dataset_dice"] for epoch in epochs}
            gains.append(test[picked] - test[max(epochs)])
    if gains:
        print(
            f"epoch chosen by validation R-RGI Dice instead of the last: {len(gains)} (prior, seed), test R-RGI Dice "
            f"{sum(gains) / len(gains):+.3f} on average; better {sum(g > 0 for g in gains)}, worse "
            f"{sum(g < 0 for g in gains)}, same {sum(g == 0 for g in gains)}"
        )


def print_choice(scored: list[dict]) -> None:
    """Print the test figures of keeping the last epoch, the best-validating epoch and seed (module docstring)."""
    by_key = index_rows(scored)
    print(
        "| category | prior | method | epochs E | seeds | last epoch | best-validating epoch <= E | "
        + "best-validating seed and epoch, k = 2, 3, ... seeds |"
    )
    print("|---" * 8 + "|")

    def score(group: tuple, seed: int, epoch: int, half: str) -> dict:
        category, prior, method = group
        return by_key[(category, prior, seed, epoch, half, method)]

    def test(group: tuple, seed: int, epoch: int) -> tuple[float, float]:
        row = score(group, seed, epoch, "test")
        return row["pixel_auroc"], row["best_dataset_dice"]

    def mean(pairs: list[tuple[float, float]]) -> str:
        return f"{sum(p[0] for p in pairs) / len(pairs):.3f} / {sum(p[1] for p in pairs) / len(pairs):.3f}"

    groups = {(key[0], key[1], key[5]) for key in by_key}  # (category, prior, method)
    for group in sorted(groups):
        runs = [key[2:4] for key in by_key if (key[0], key[1], key[5]) == group and key[4] == "test"]
        seeds, epochs = sorted({run[0] for run in runs}), sorted({run[1] for run in runs})
        for last in epochs:
            candidates = [(seed, epoch) for seed in seeds for epoch in epochs if epoch <= last]
            valid = {run: score(group, *run, "validation")["best_dataset_dice"] for run in candidates}
            per_seed = [max((run for run in candidates if run[0] == seed), key=valid.get) for seed in seeds]
            subsets = [
                mean(
                    [
                        test(group, *max((run for run in candidates if run[0] in subset), key=valid.get))
                        for subset in combinations(seeds, k)
                    ]
                )
                for k in range(2, len(seeds) + 1)
            ]
            kept_last = mean([test(group, seed, last) for seed in seeds])
            kept_best = mean([test(group, *run) for run in per_seed])
            print(
                f"| {group[0]} | {group[1]} | {group[2]} | {last} | {len(seeds)} | {kept_last} | {kept_best} | "
                + ", ".join(subsets)
                + " |"
            )


def main() -> None:
    """Print the table, or the selection figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", nargs="+", type=Path)
    parser.add_argument("--selection", action="store_true", help="how well the validation half picks priors")
    parser.add_argument("--choice", action="store_true", help="last epoch vs best-validating epoch and seed")
    args = parser.parse_args()
    rows = [json.loads(line) for path in args.rows for line in path.read_text().splitlines()]
    scored = [row for row in rows if "pixel_auroc" in row]
    if args.choice:
        print_choice(scored)
        return
    scored = [row for row in scored if row["method"] in METHODS]
    if args.selection:
        print_selection(scored)
        return
    cells, seeds = defaultdict(list), defaultdict(set)
    for row in scored:
        key = (row["category"], prior_name(row), row["epoch"])
        cells[(*key, row["half"], METHODS[row["method"]])].append(row)
        seeds[key].add(row["seed"])
    columns = [(half, method) for half in ("validation", "test") for method in METHODS.values()]
    print("| category | prior | epochs | seeds | " + " | ".join(f"{h} {m}" for h, m in columns) + " | test foreign |")
    print("|---" * (len(columns) + 5) + "|")
    for key in sorted(seeds):
        values = []
        for half, method in columns:
            group = cells[(*key, half, method)]
            if not group:  # e.g. a grid scored with --encoder-start-only
                values.append("")
                continue
            auroc = sum(row["pixel_auroc"] for row in group) / len(group)
            dice = sum(row["best_dataset_dice"] for row in group) / len(group)
            values.append(f"{auroc:.3f} / {dice:.3f}")
        foreign = [row.get("foreign", float("nan")) for row in cells[(*key, "test", "RGI 0 steps")]]
        values.append(f"{sum(foreign) / len(foreign):.2f}")
        category, prior, epoch = key
        print(
            f"| {category} | {prior} | {epoch} | {','.join(map(str, sorted(seeds[key])))} | "
            + " | ".join(values)
            + " |"
        )


if __name__ == "__main__":
    main()
