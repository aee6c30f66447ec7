"""Pictures of a prior's map and its parts on good and defective validation crops, to see shapes the method draws.

    python research/probes/map_pictures.py CACHE.pt CKPT --category C --data-root R --out sheet.png [--good 6]
        [--defective 4]

One row per crop: the input, then each part of the map the checkpoint chose (mask above its floor,
each added part at its weight and floor) and the whole map, all on one colour scale (0 to the whole
map's 99.5th percentile over the good crops shown, times 2), the ground truth outlined. Box-shaped
blobs on good crops and bands along the border are the method's, not the part's.
"""

from __future__ import annotations

import argparse

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from select_map import parts_of, prepared_model

from anomalib_rgi.models.rgi.anomaly_map import ADDED_PARTS, weigh


def draw(model, data: dict, out, good: int = 6, defective: int = 4, title: str = "") -> None:
    """Draw the map of ``model``'s current settings and its parts on ``good`` and ``defective`` crops of ``data``."""
    settings = dict(model.model.anomaly_map.settings)
    labels = data["label"].numpy()
    rows = [*np.flatnonzero(labels == 0)[:good], *np.flatnonzero(labels == 1)[:defective]]
    subset = {k: (v[rows] if k != "kind" else [v[i] for i in rows]) for k, v in data.items()}
    parts = parts_of(model, subset)
    alone = dict.fromkeys(ADDED_PARTS, 0.0)
    columns = {"mask above floor": (parts["mask"] - settings["mask_floor"]).clamp(min=0)}
    for part in ADDED_PARTS:
        if settings.get(part):
            only = settings | alone | {part: settings[part], "mask_floor": 1e9}
            columns[f"{part.replace('_', ' ')} x{settings[part]:g}"] = weigh(parts, only)
    columns["whole map"] = weigh(parts, settings)
    whole = columns["whole map"][:good].numpy()
    top = 2 * float(np.quantile(whole, 0.995)) if good else float(columns["whole map"].max())
    figure, axes = plt.subplots(len(rows), len(columns) + 1, figsize=(1.6 * (len(columns) + 1), 1.6 * len(rows)))
    for row in range(len(rows)):
        image = ((subset["target"][row].permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1)
        axes[row, 0].imshow(image.squeeze())
        axes[row, 0].set_ylabel(subset["kind"][row], fontsize=7)
        for column, (name, maps) in enumerate(columns.items(), start=1):
            axes[row, column].imshow(maps[row, 0].numpy(), vmin=0, vmax=top, cmap="inferno")
            if subset["label"][row]:
                axes[row, column].contour(subset["gt"][row, 0].numpy(), levels=[0.5], colors="cyan", linewidths=0.5)
            if row == 0:
                axes[row, column].set_title(name, fontsize=7)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(f"{title or 'map parts'} on one scale (0 to {top:.2f})", fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cache")
    parser.add_argument("checkpoint")
    parser.add_argument("--category", default="brick")
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--good", type=int, default=6)
    parser.add_argument("--defective", type=int, default=4)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    data = torch.load(args.cache, weights_only=False)[args.split]
    model = prepared_model(args.checkpoint, args.data_root, args.category)
    draw(model, data, args.out, args.good, args.defective, title=args.category)


if __name__ == "__main__":
    main()
