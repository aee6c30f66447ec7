"""Quality against step budget for a trained Rgi checkpoint (chooses the `fast` preset).

python experiments/step_budget.py --checkpoint <model.ckpt> --category brick
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from sklearn.metrics import roc_auc_score

from anomalib_rgi import Rgi
from anomalib_rgi.data.textures import load_test_split
from anomalib_rgi.metrics import best_dataset_dice
from anomalib_rgi.models.rgi import invert


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--category", default="brick")
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    parser.add_argument("--budgets", default="0,5,10,20,50,200")
    args = parser.parse_args()
    model = Rgi.load_from_checkpoint(args.checkpoint).eval()
    images, masks = load_test_split(args.data_root, args.category)
    scaled = images * 2 - 1
    with torch.no_grad():
        start = model.model.encoder(scaled)
    for budget in [int(b) for b in args.budgets.split(",")]:
        for solver in ("adam", "closed_form"):
            for lr in (0.1, 0.3):
                began = time.time()
                if budget == 0:
                    with torch.no_grad():
                        residual = scaled - model.model.generator(start)
                    mask = residual
                else:
                    result = invert(
                        model.model.generator,
                        scaled,
                        start,
                        lam=model.hparams.lam,
                        steps=budget,
                        lr=lr,
                        mask_lr=lr,
                        mask_solver=solver,
                    )
                    mask = result.mask
                seconds = time.time() - began
                anomaly_map = model.model.blur(mask.abs().mean(1, keepdim=True))[:, 0].numpy()
                row = {
                    "category": args.category,
                    "steps": budget,
                    "solver": solver,
                    "lr": lr,
                    "pixel_auroc": round(float(roc_auc_score(masks.ravel(), anomaly_map.ravel())), 4),
                    "best_dice": round(best_dataset_dice(anomaly_map, masks), 4),
                    "ms_per_image": round(1000 * seconds / len(images), 1),
                }
                print(json.dumps(row), flush=True)
                if budget == 0:
                    break
            if budget == 0:
                break


if __name__ == "__main__":
    main()
