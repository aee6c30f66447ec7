"""How far a prior's start G(E(x)) is off on good images, and the coarse residual with and without centring.

    python research/probes/start_bias.py CATEGORY CKPT [CKPT ...] [--data-root R] [--version 2]

Needs no inversion (the encoder's start only): seconds per prior. Per prior: the per-channel mean and
spread of the window-mean residual x - G(E(x)) on 64 training crops, then pixel / image AUROC of the
coarse residual on the validation and test halves as it was (``mean_c |window mean|``), centred on the
training mean, centred and divided by the spread (the product's), and the same as a per-channel L2 norm;
per defect kind on the test half.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from anomalib_rgi import Rgi, RgiTextures
from anomalib_rgi.models.rgi.anomaly_map import CoarseResidual


def collect(loader, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, np.ndarray]:
    images, masks, labels, kinds = [], [], [], []
    for batch in loader:
        images.append(batch.image)
        labels.append(batch.gt_label)
        if batch.gt_mask is not None:
            masks.append(batch.gt_mask.float())
        kinds += [path.split("/")[-2] for path in batch.image_path]
        if limit and sum(len(chunk) for chunk in images) >= limit:
            break
    return torch.cat(images), torch.cat(masks) if masks else None, torch.cat(labels), np.array(kinds)


def window_mean(model, images: torch.Tensor) -> torch.Tensor:
    """The product's coarse residual before centring: its window mean of x - G(E(x)), as calibration inverts."""
    result = model.invert(images, steps=0, mask_solver="closed_form", finetune_steps=0)
    return CoarseResidual(model.image_size // 4 | 1, images.shape[1]).window_mean(result.target, result.start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("category")
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    parser.add_argument("--version", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = RgiTextures(
        root=args.data_root, category=args.category, version=args.version, eval_batch_size=40, train_batch_size=32
    )
    data.prepare_data()
    data.setup()
    train = collect(data.train_dataloader(), 64)[0]
    halves = {"val": collect(data.val_dataloader()), "test": collect(data.test_dataloader())}
    for checkpoint in args.checkpoints:
        model = Rgi.load_from_checkpoint(checkpoint, map_location="cpu").eval().model
        normal = window_mean(model, train)
        centre = normal.mean((0, 2, 3), keepdim=True)
        spread = (normal - centre).std((0, 2, 3), keepdim=True)
        print(
            f"{checkpoint}\n  start's mean residual on training crops (per channel, [-1, 1] units): "
            f"{centre.flatten().numpy().round(3)}, spread {spread.flatten().numpy().round(3)}"
        )
        for name, (images, masks, labels, kinds) in halves.items():
            averaged = window_mean(model, images)
            variants = {
                "as it was": averaged.abs().mean(1),
                "centred": (averaged - centre).abs().mean(1),
                "centred / spread": ((averaged - centre) / spread).abs().mean(1),
                "centred / spread, L2": ((averaged - centre) / spread).square().sum(1).sqrt(),
            }
            truth = masks.reshape(len(masks), -1).numpy() > 0.5
            cells = [
                f"{label} {roc_auc_score(truth.ravel(), part.flatten().numpy()):.3f}"
                f"/{roc_auc_score(labels.numpy(), part.flatten(1).amax(1).numpy()):.3f}"
                for label, part in variants.items()
            ]
            print(f"  {name} pixel/image AUROC: " + "  ".join(cells))
            if name == "test":
                for kind in sorted(set(kinds) - {"good"}):
                    rows = (kinds == kind) | (kinds == "good")
                    before, after = (
                        roc_auc_score(truth[rows].ravel(), variants[label][rows].flatten().numpy())
                        for label in ("as it was", "centred / spread")
                    )
                    print(f"    {kind} pixel AUROC: as it was {before:.2f}, centred / spread {after:.2f}")


if __name__ == "__main__":
    main()
