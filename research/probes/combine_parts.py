"""Score maps that add the coarse residual AND an ImageNet-feature part to the mask, on a cached inversion.

    python research/probes/combine_parts.py CACHE.pt CKPT --data-root R --category C [--floor-quantile 0.9]

Parts come from the product (the checkpoint's calibration; unprepared parts prepared on the training
images as scoring would); the floor is learned on the good validation images as a fit learns it.
Prints validation and test figures of each combination (per kind on the test half: image AUROC).
"""

from __future__ import annotations

import argparse
import itertools

import torch
from select_map import figures, parts_of, prepared_model

from anomalib_rgi.models.rgi.anomaly_map import ADDED_PARTS
from anomalib_rgi.models.rgi.map_selection import good_level


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cache")
    parser.add_argument("checkpoint")
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    parser.add_argument("--category", default="brick")
    parser.add_argument("--floor-quantile", type=float, default=0.9)
    parser.add_argument("--coarse", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0])
    parser.add_argument("--prior", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0])
    args = parser.parse_args()
    cache = torch.load(args.cache, weights_only=False)
    model = prepared_model(args.checkpoint, args.data_root, args.category)
    val, test = parts_of(model, cache["val"]), parts_of(model, cache["test"])
    floor = good_level([(val, cache["val"]["gt"], cache["val"]["label"])], args.floor_quantile)
    print(f"floor {floor:.4f}; columns: half pixel AUROC / best Dice / image AUROC")
    kinds = None
    for coarse, prior in itertools.product(args.coarse, args.prior):
        settings = dict.fromkeys(ADDED_PARTS, 0.0) | {"coarse_residual": coarse, "feature_prior": prior}
        settings["mask_floor"] = floor
        rows = [figures(parts, settings, cache[half]) for parts, half in ((val, "val"), (test, "test"))]
        kinds = kinds or sorted(rows[1]["kinds"])
        cells = " | ".join(
            f"{row['pixel_AUROC']:.3f} / {row['Dice_best']:.3f} / {row['image_AUROC']:.3f}" for row in rows
        )
        per_kind = " ".join(f"{kind}:{rows[1]['kinds'][kind]['image_AUROC']:.2f}" for kind in kinds)
        print(f"| coarse x{coarse:g} + prior x{prior:g} | {cells} | {per_kind}", flush=True)


if __name__ == "__main__":
    main()
