"""Which short inversion budget comes nearest the authors' long one (issue #3), on any device.

For each trained Rgi checkpoint and the built-in test crops of its category, computes the smoothed
|M| maps of the long budget (``--long-steps``, default 2000, the model's own solver and rates) and of
every short variant of a grid (steps x mask solver x latent / mask learning rates), and reports pixel
AUROC, best-threshold dataset-level Dice (F1Max) and the Dice gap to the long budget. Quality only:
the latency target of issue #3 is measured by ``benchmark_speed.py`` on 2 CPU cores; this sweep
picks which short settings are worth timing there, and runs on a GPU in minutes.

    python scripts/sweep_fast.py --checkpoint brick=results/.../model.ckpt --device cuda
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score

from anomalib_rgi import Rgi
from anomalib_rgi.data.textures import load_test_split
from anomalib_rgi.metrics import best_dataset_dice
from compare_peers import category_checkpoint

COLUMNS = ("category", "steps", "mask_solver", "lr", "mask_lr", "lam", "pixel_auroc", "best_dataset_dice", "dice_gap")


def variants(
    steps: list[int], rates: list[float], mask_rates: list[float], lams: list[float | None], solvers: list[str]
) -> list[dict]:
    """The grid: Adam on M over the mask rates (it needs a step: none at 0 steps); the closed-form M has
    no rate of its own, and plain inversion (``none``) neither a rate nor a lam. ``lam`` None keeps
    the checkpoint's."""
    grid = []
    for count, lr, lam in itertools.product(steps, rates, lams):
        common = {"steps": count, "lr": lr}
        for solver in solvers:
            if solver == "adam":
                if count > 0:
                    grid += [{**common, "mask_solver": solver, "mask_lr": m, "lam": lam} for m in mask_rates]
            elif solver == "closed_form":
                grid.append({**common, "mask_solver": solver, "mask_lr": None, "lam": lam})
            elif lam == lams[0]:  # plain inversion has no lam: once per step count and rate
                grid.append({**common, "mask_solver": solver, "mask_lr": None, "lam": None})
    return grid


def score(model: Rgi, images: torch.Tensor, masks: torch.Tensor, settings: dict, batch: int) -> dict:
    """Pixel AUROC and best dataset Dice of the maps ``settings`` give, every image scored once."""
    overrides = {key: value for key, value in settings.items() if value is not None}
    maps = torch.cat(
        [
            model.model.anomaly_map(model.model.invert(images[i : i + batch], **overrides))[:, 0].cpu()
            for i in range(0, len(images), batch)
        ]
    ).numpy()
    return {
        "pixel_auroc": round(float(roc_auc_score(masks.ravel(), maps.ravel())), 4),
        "best_dataset_dice": round(best_dataset_dice(maps, masks), 4),
    }


def main() -> None:
    """Run the long budget and the grid per checkpoint; write table.md and results.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint", type=category_checkpoint, action="append", required=True, metavar="CATEGORY=PATH"
    )
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    parser.add_argument("--images", type=int, default=None, help="test crops used (every k-th); default all")
    parser.add_argument(
        "--half", default="all", choices=("all", "validation", "test"), help="choose on validation, report on test"
    )
    parser.add_argument("--long-steps", type=int, default=2000)
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 30])
    parser.add_argument("--lr", type=float, nargs="+", default=[0.03, 0.1, 0.3])
    parser.add_argument("--mask-lr", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--lam", type=float, nargs="+", default=[None], help="default: the checkpoint's")
    parser.add_argument(
        "--solvers", nargs="+", default=["adam", "closed_form"], choices=("adam", "closed_form", "none")
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="results/sweep_fast")
    args = parser.parse_args()

    checkpoints = dict(args.checkpoint)

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M-%SZ")
    out = Path(args.out) / stamp
    out.mkdir(parents=True, exist_ok=False)
    rows = []
    for category, path in checkpoints.items():
        model = Rgi.load_from_checkpoint(path, map_location=args.device).eval()
        images, masks = load_test_split(args.data_root, category, args.images, args.half)
        images = images.to(args.device)
        start = time.time()
        long_row = score(model, images, masks, {"steps": args.long_steps}, args.batch)
        reference = {
            "category": category,
            "steps": args.long_steps,
            "mask_solver": model.model.inversion["mask_solver"],
            "lr": model.model.inversion["lr"],
            "mask_lr": model.model.inversion["mask_lr"],
            "lam": model.model.inversion["lam"],
            **long_row,
            "dice_gap": 0.0,
        }
        rows.append(reference)
        print(json.dumps({**reference, "seconds": round(time.time() - start, 1)}), flush=True)
        for settings in variants(args.steps, args.lr, args.mask_lr, args.lam, args.solvers):
            row = {"category": category, **settings, **score(model, images, masks, settings, args.batch)}
            row["dice_gap"] = round(reference["best_dataset_dice"] - row["best_dataset_dice"], 4)
            rows.append(row)
            print(json.dumps(row), flush=True)
        (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))

    device = (
        torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU {torch.get_num_threads()} threads"
    )
    header = (
        f"Short-budget sweep {stamp}, {device}, torch {torch.__version__}; {len(images)} crops per category"
        f" (test split: {args.half})"
    )
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join("-" if row.get(c) is None else str(row[c]) for c in COLUMNS) + " |" for row in rows]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
