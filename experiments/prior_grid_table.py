"""Markdown table of prior_grid.py rows: per category, prior and scored epoch, the mean over seeds.

Cells are pixel AUROC / best dataset Dice for each half and method, then the test half's pixel AUROC
on foreign material (the defect type RGI misses on grass) at the encoder's start.

python experiments/prior_grid_table.py docs/results/prior-grid-gpu-2026-11-26/*.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

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
    return name


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", nargs="+", type=Path)
    args = parser.parse_args()
    rows = [json.loads(line) for path in args.rows for line in path.read_text().splitlines()]
    scored = [row for row in rows if "pixel_auroc" in row]
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
