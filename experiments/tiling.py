"""Large crops: one prior on the resized image, or the same prior size on tiles (``Rgi(input_size=...)``)?

For each trained Rgi checkpoint, scores one half of the built-in test crops as the model does
(its pre-processor resizes to its ``input_size``; a tiled model cuts the tiles), then compares every
map with the ground truth at the crops' own resolution (maps upsampled bilinearly), so models that
score at different sizes are measured on the same pixels. One JSON row per checkpoint: pixel AUROC,
best dataset Dice, image AUROC, pixel AUROC per defect type, and ms per image (scoring only).

python experiments/tiling.py --data-root datasets/rgi_textures_192 --category brick --half test \
    --checkpoints results/tiling-s16/resized/.../model.ckpt results/tiling-s16/tiled/.../model.ckpt
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812

from anomalib_rgi import Rgi
from anomalib_rgi.data.textures import load_test_split, split_defect_types
from anomalib_rgi.metrics import map_quality


def main() -> None:
    """Score each checkpoint on one half at the crops' resolution; print one JSON row each."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", type=Path, required=True)
    parser.add_argument("--category", default="brick")
    parser.add_argument("--data-root", default="datasets/rgi_textures_192")
    parser.add_argument("--half", default="test", choices=("validation", "test"))
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    images, masks = load_test_split(args.data_root, args.category, half=args.half)
    defects = split_defect_types(args.data_root, args.category, half=args.half)
    for checkpoint in args.checkpoints:
        model = Rgi.load_from_checkpoint(checkpoint, map_location="cpu").eval()
        torch.manual_seed(0)
        maps, started = [], time.perf_counter()
        for batch in images.split(args.batch_size):
            scored = model.model(model.pre_processor.transform(batch)).anomaly_map
            maps.append(F.interpolate(scored, size=masks.shape[-2:], mode="bilinear", align_corners=False))
        seconds = time.perf_counter() - started
        scores = torch.cat(maps).squeeze(1).numpy()
        row = {
            "checkpoint": str(checkpoint),
            "half": args.half,
            "image_size": model.model.image_size,
            "input_size": model.model.input_size,
            **map_quality(scores, masks, defects),
            "ms_per_image": round(1000 * seconds / len(images), 1),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
