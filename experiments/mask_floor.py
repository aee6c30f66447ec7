"""The mask floor: does R-RGI's mask map count better above its level on good images (issue #5)?

With a feature part carrying grass's defects (session 22), adding the mask map raised Dice and cost
pixel AUROC: the mask's level on normal texture is noise among the feature part's low scores. This
probe inverts each half of the built-in data once with a trained prior's own settings and scores the
map ``max(mask - floor, 0) + a * restoration + b * prior`` for floors at quantiles of the mask map on
the validation half's good images (``Rgi``'s ``mask_floor_quantile``; none: the shipped map) and
every weight pair, on both halves. One JSON row per prior, floor quantile, pair and half (pixel
AUROC, best dataset Dice, image AUROC, per defect type), and the pair validation's best Dice would
keep at each floor.

python experiments/mask_floor.py --category grass --checkpoints <model.ckpt> --out rows.jsonl
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from feature_map import scoring_halves
from feature_space_probe import emit

from anomalib_rgi import Rgi
from anomalib_rgi.metrics import map_quality
from anomalib_rgi.models.rgi.torch_model import RgiModel


def map_parts(rgi: RgiModel, images: torch.Tensor, batch_size: int = 20) -> dict[str, torch.Tensor]:
    """The map parts of one seeded inversion of ``images`` with the prior's own settings."""
    torch.manual_seed(0)
    chunks = []
    for start in range(0, len(images), batch_size):
        result = rgi.invert(images[start : start + batch_size])
        with torch.no_grad():
            chunks.append({name: part.detach() for name, part in rgi.map_parts(result).items()})
    return {name: torch.cat([chunk[name] for chunk in chunks]) for name in chunks[0]}


def main() -> None:
    """Score each prior's halves at every floor and weight pair; print JSON rows."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", required=True)
    parser.add_argument("--checkpoints", nargs="+", type=Path, required=True)
    parser.add_argument("--quantiles", nargs="+", type=float, default=[0.0, 0.5, 0.75, 0.9, 0.95, 0.99])
    parser.add_argument("--feature-weights", nargs="+", type=float, default=[0.0, 0.5])
    parser.add_argument("--prior-weights", nargs="+", type=float, default=[0.0, 0.25, 0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    halves = scoring_halves(args.data_root, args.category, ["validation", "test"])
    for checkpoint in args.checkpoints:
        rgi = Rgi.load_from_checkpoint(checkpoint, map_location="cpu", feature_weights=[0.0]).eval().model
        scored = {half: (map_parts(rgi, images), masks, defects) for half, (images, masks, defects) in halves.items()}
        parts, _, defects = scored["validation"]
        good_mask = parts["mask"][torch.as_tensor(np.asarray(defects) == "good")].flatten()
        for quantile in args.quantiles:
            floor = float(good_mask.quantile(quantile)) if quantile else 0.0
            kept = None
            for feature_weight in args.feature_weights:
                for prior_weight in args.prior_weights:
                    settings = {"feature_weight": feature_weight, "feature_prior_weight": prior_weight}
                    rows = {}
                    for half, (parts, masks, defects) in scored.items():
                        anomaly_map = RgiModel.weigh(parts, **settings, mask_floor=floor)
                        rows[half] = {"category": args.category, "checkpoint": str(checkpoint), "half": half}
                        rows[half] |= {"floor_quantile": quantile, "mask_floor": round(floor, 4), **settings}
                        rows[half] |= map_quality(anomaly_map[:, 0].numpy(), masks, defects)
                        emit(rows[half], args.out)
                    if (
                        kept is None
                        or rows["validation"]["best_dataset_dice"] > kept["validation"]["best_dataset_dice"]
                    ):
                        kept = rows
            print(f"floor quantile {quantile}: validation keeps {kept['test']}", flush=True)


if __name__ == "__main__":
    main()
