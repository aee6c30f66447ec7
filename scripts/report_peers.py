"""Plots and table of ``scripts/compare_peers.py`` runs: what the README shows.

Merges one or more run folders (e.g. one per category) and writes to ``--out``:

- ``table.md``: every metric, fit time, ms per image and peak memory per model and category, with the
  anomaly map RGI's rows used (``mask``: the paper's map);
- ``roc.png``: pixel-level ROC curves, one panel per category;
- ``bars.png``: pixel AUROC and dataset-level Dice (best threshold) per category and model;
- ``examples.png``: per category, three defective test crops: input, ground truth, each model's map;
- ``defects.md``: per defect kind (that kind's crops and the good ones), image AUROC, pixel AUROC,
  dataset-level Dice at the best threshold and the paper's per-image Dice of every model: a kind a
  model misses stands out instead of averaging away.

Figures and ``defects.md`` label RGI's rows ``variant [map]``.

    python scripts/report_peers.py results/peers/<run> [results/peers/<run> ...] --out results/peers-report
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_curve

from anomalib_rgi.metrics import quality_per_defect
from anomalib_rgi.reporting import PEER_COLUMNS, markdown_table

EXAMPLES = 3


def load(runs: list[Path]) -> tuple[list[dict], dict[str, dict[str, dict]], str]:
    """Rows, test outputs per category and model, and the machine line of the runs."""
    rows, maps, machines, source = [], {}, set(), {}
    for run in runs:
        result = json.loads((run / "results.json").read_text())
        for row in result["rows"]:
            key = row["category"], row["model"]
            if key in source:
                msg = f"{key[1]!r} on {key[0]} is in two runs ({source[key]} and {run}): give one run per model."
                raise SystemExit(msg)
            source[key] = run
        rows += result["rows"]
        machines.add(result["machine"])
        for path in sorted((run / "maps").glob("*/*.npz")):
            maps.setdefault(path.parent.name, {})[path.stem] = dict(np.load(path))
    labels = {(row["category"], row["model"]): row_label(row) for row in rows}
    maps = {
        category: {labels.get((category, model), model): outputs for model, outputs in models.items()}
        for category, models in maps.items()
    }
    return rows, maps, "; ".join(sorted(machines))


def row_label(row: dict) -> str:
    """A row's model, with the anomaly map it used where it has one of RGI's."""
    return f"{row['model']} [{row['map']}]" if row.get("map") else row["model"]


def roc_figure(maps: dict[str, dict[str, dict]], out: Path) -> None:
    """Pixel ROC curves per category."""
    figure, axes = plt.subplots(1, len(maps), figsize=(5 * len(maps), 4.5), squeeze=False)
    for axis, (category, models) in zip(axes[0], maps.items(), strict=True):
        for model, outputs in models.items():
            if "anomaly_map" not in outputs:
                continue
            false_positive, true_positive, _ = roc_curve(
                outputs["gt_mask"].ravel(), outputs["anomaly_map"].astype(np.float32).ravel()
            )
            axis.plot(false_positive, true_positive, label=model, linewidth=1.2)
        axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
        axis.set(title=f"{category}: pixel ROC", xlabel="false positive rate", ylabel="true positive rate")
        axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(out / "roc.png", dpi=110)
    plt.close(figure)


def bars_figure(rows: list[dict], out: Path) -> None:
    """Pixel AUROC and best-threshold dataset Dice per category and model."""
    categories = list(dict.fromkeys(row["category"] for row in rows))
    models = list(dict.fromkeys(row_label(row) for row in rows))
    figure, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / len(models)
    for axis, metric, label in zip(
        axes, ("pixel_AUROC", "pixel_F1Max"), ("pixel AUROC", "dataset Dice, best threshold"), strict=True
    ):
        for index, model in enumerate(models):
            values = [
                next((row[metric] for row in rows if row["category"] == c and row_label(row) == model), None) or 0.0
                for c in categories
            ]
            axis.bar(np.arange(len(categories)) + index * width, values, width, label=model)
        axis.set_xticks(np.arange(len(categories)) + 0.4 - width / 2, categories)
        axis.set(title=label, ylim=(0, 1))
    axes[1].legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    figure.savefig(out / "bars.png", dpi=110)
    plt.close(figure)


def examples_figure(maps: dict[str, dict[str, dict]], out: Path) -> None:
    """Input, ground truth and every model's map for a few defective crops of each category."""
    lines = []
    for category, models in maps.items():
        with_maps = {model: outputs for model, outputs in models.items() if "anomaly_map" in outputs}
        reference = next(iter(with_maps.values()))
        defective = np.flatnonzero(reference["gt_mask"].reshape(len(reference["gt_mask"]), -1).any(1))[:EXAMPLES]
        lines += [(category, index, reference, with_maps) for index in defective]
    columns = 2 + max(len(line[3]) for line in lines)
    figure, axes = plt.subplots(len(lines), columns, figsize=(1.6 * columns, 1.7 * len(lines)), squeeze=False)
    for row, (category, index, reference, with_maps) in enumerate(lines):
        panels = [("input", np.moveaxis(reference["image"][index].astype(np.float32), 0, -1), None)]
        panels.append(("ground truth", reference["gt_mask"][index], "gray"))
        panels += [
            (model, outputs["anomaly_map"][index].astype(np.float32), "jet") for model, outputs in with_maps.items()
        ]
        for column, axis in enumerate(axes[row]):
            axis.axis("off")
            if column < len(panels):
                title, picture, colours = panels[column]
                axis.imshow(picture, cmap=colours)
                # a model's name can differ per category (its prior's kept settings): label each category's first row
                first_of_category = row == 0 or lines[row - 1][0] != category
                axis.set_title(textwrap.fill(title, 24) if first_of_category else "", fontsize=6)
        axes[row][0].text(-8, 64, category, rotation=90, va="center", ha="right", fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "examples.png", dpi=110)
    plt.close(figure)


DEFECT_METRICS = {
    "image_AUROC": "image AUROC",
    "pixel_AUROC": "pixel AUROC",
    "pixel_F1Max": "dataset-level Dice, best threshold",
    "pixel_PerImageBestDice": "paper's per-image Dice",
}


def defect_table(maps: dict[str, dict[str, dict]], header: str) -> str:
    """Per category and metric, a table of every model (rows) on every defect kind (columns)."""
    lines = [header, ""]
    for category, models in maps.items():
        with_maps = {model: outputs for model, outputs in models.items() if "anomaly_map" in outputs}
        reference = next(iter(with_maps.values()), {})
        if "defect" not in reference:
            continue  # no maps, or a run from before the defect kinds were kept
        quality = {
            model: quality_per_defect(
                outputs["anomaly_map"], outputs["gt_mask"], outputs["defect"], outputs["pred_score"]
            )
            for model, outputs in with_maps.items()
        }
        kinds = sorted(set(reference["defect"]) - {"good"})
        for metric, title in DEFECT_METRICS.items():
            lines += [f"**{category}, {title}**", ""]
            lines += ["| model | " + " | ".join(kinds) + " |", "|" + "---|" * (len(kinds) + 1)]
            for model, per_kind in quality.items():
                lines.append(f"| {model} | " + " | ".join(f"{per_kind[kind][metric]:.3f}" for kind in kinds) + " |")
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    """Merge the runs and write the table and the three figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows, maps, machine = load(args.runs)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = ", ".join(run.name for run in args.runs)
    (args.out / "table.md").write_text(markdown_table(rows, PEER_COLUMNS, f"Peer comparison (runs {runs}), {machine}"))
    header = f"Per defect kind (that kind's test crops and the good ones), runs {runs}, {machine}"
    (args.out / "defects.md").write_text(defect_table(maps, header))
    roc_figure(maps, args.out)
    bars_figure(rows, args.out)
    examples_figure(maps, args.out)
    print((args.out / "table.md").read_text())


if __name__ == "__main__":
    main()
