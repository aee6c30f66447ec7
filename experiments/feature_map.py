"""Does the feature distance between input and restoration lift RGI's map on every prior (issue #5)?

For each trained prior (any ``feature_weight``), the feature map's scale is calibrated on the first
32 training crops (``Rgi.model.calibrate_feature_scale``, what a fit with ``feature_weight > 0`` does
after every epoch); each half and scoring method is inverted once, and the anomaly map for every
``--weights`` value is ``mask map + w * scale * feature distance`` (linear in ``w``, so one inversion
serves all weights). One JSON row per prior, half, method and weight: pixel AUROC, best dataset Dice
and pixel AUROC per defect type, as the other experiment scripts report them.

python experiments/feature_map.py --category gravel --checkpoints results/ensemble/gravel-w8-s0-e20.ckpt \
    --methods encoder rrgi --weights 0 0.5 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from anomalib_rgi import Rgi
from anomalib_rgi.data.textures import load_test_split, split_defect_types
from anomalib_rgi.inpainting import load_images
from anomalib_rgi.metrics import map_quality

METHODS = {
    "encoder": {"steps": 0, "mask_solver": "closed_form", "finetune_steps": 0},
    "rgi": {"steps": 200, "mask_solver": "adam", "finetune_steps": 0},
    "rrgi": {"steps": 200, "mask_solver": "adam", "finetune_steps": 50, "finetune_lr": 1e-4},
}


def score(model: Rgi, images: torch.Tensor, settings: dict, weights: list[float]) -> dict[float, torch.Tensor]:
    """Anomaly maps ``(N, H, W)`` of one inversion for each feature weight."""
    torch.manual_seed(0)
    result = model.model.invert(images, **settings)
    model.model.feature_weight = 0.0
    mask_map = model.model.anomaly_map(result)
    model.model.feature_weight = 1.0
    feature_part = model.model.anomaly_map(result) - mask_map
    return {weight: (mask_map + weight * feature_part)[:, 0].cpu() for weight in weights}


def main() -> None:
    """Score each prior with and without the feature map; print one JSON row each."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", required=True)
    parser.add_argument("--checkpoints", nargs="+", type=Path, required=True)
    parser.add_argument("--halves", nargs="+", default=["validation", "test"], choices=("validation", "test"))
    parser.add_argument("--methods", nargs="+", default=["encoder", "rrgi"], choices=sorted(METHODS))
    parser.add_argument("--weights", nargs="+", type=float, default=[0.0, 0.5, 1.0])
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    missing = [str(path) for path in args.checkpoints if not path.is_file()]
    if missing:
        parser.error(f"no such checkpoint: {', '.join(missing)}")
    if any(weight < 0 for weight in args.weights):
        parser.error("--weights must be 0 or positive")
    halves = {half: load_test_split(args.data_root, args.category, half=half) for half in args.halves}
    defects = {half: split_defect_types(args.data_root, args.category, half=half) for half in args.halves}
    train_paths = sorted((Path(args.data_root) / args.category / "train" / "good").glob("*.png"))[:32]
    for checkpoint in args.checkpoints:
        model = Rgi.load_from_checkpoint(checkpoint, map_location="cpu", feature_weight=1.0).eval().to(args.device)
        train = load_images(train_paths, model.model.image_size).to(args.device)
        scale = model.model.calibrate_feature_scale(train)
        for half, (images, masks) in halves.items():
            for method in args.methods:
                for weight, maps in score(model, images.to(args.device), METHODS[method], args.weights).items():
                    row = {
                        "category": args.category,
                        "checkpoint": str(checkpoint),
                        "half": half,
                        "method": method,
                        "feature_weight": weight,
                        "feature_scale": round(scale, 4),
                        **map_quality(maps.numpy(), masks, defects[half]),
                    }
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
