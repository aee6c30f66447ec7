"""R-RGI whose per-image fine-tuning sees only the pixels RGI kept: does it stop learning the defect.

R-RGI's per-image generator weights learn a defect away (grass validation Dice 0.23-0.25 against 0.57
for RGI held at the encoder start, docs/experiments.md). Here the fine-tuning objective uses the
closed-form mask of the RGI stage, frozen (``finetune_on_kept=True``), and the map is the closed-form
mask of the fine-tuned residual. Scored on the VALIDATION half of the test crops.

python docs/results/rrgi-kept-2026-11-26/rrgi_kept.py --checkpoint grass=<model.ckpt> --finetune-steps 50 100
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from anomalib_rgi import Rgi
from anomalib_rgi.data.textures import load_test_split

sys.path.insert(0, str(Path(__file__).parents[3] / "scripts"))
from sweep_fast import score

from compare_peers import category_checkpoint


def main() -> None:
    """Score RGI at the start and R-RGI with and without the frozen mask, one JSON row each."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=category_checkpoint, action="append", required=True)
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    parser.add_argument("--steps", type=int, default=0, help="RGI steps before fine-tuning")
    parser.add_argument("--lam", type=float, default=0.02)
    parser.add_argument("--finetune-steps", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--finetune-lr", type=float, nargs="+", default=[1e-4])
    parser.add_argument("--batch", type=int, default=20)
    args = parser.parse_args()
    for category, path in args.checkpoint:
        model = Rgi.load_from_checkpoint(path, map_location="cpu").eval()
        model.model.inversion.setdefault("finetune_on_kept", False)  # the solver option on trial
        images, masks = load_test_split(args.data_root, category, half="validation")
        common = {"steps": args.steps, "mask_solver": "closed_form", "lam": args.lam}
        grid = [{**common, "finetune_steps": 0}]
        for count in args.finetune_steps:
            for lr in args.finetune_lr:
                for kept in (False, True):
                    grid.append({**common, "finetune_steps": count, "finetune_lr": lr, "finetune_on_kept": kept})
        for settings in grid:
            start = time.time()
            row = {"category": category, **settings, **score(model, images, masks, settings, args.batch)}
            print(json.dumps({**row, "seconds": round(time.time() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
