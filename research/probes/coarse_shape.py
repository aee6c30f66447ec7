"""The coarse residual's window shape and normal fit, on a prior's cached validation half.

    python research/probes/coarse_shape.py CACHE.pt CKPT --category C --data-root R [--fit-crops 16 240]
        [--pictures DIR]

The part as shipped before (git 56be74b) averaged the start's residual over a square window clipped at
the border and centred it with one mean and spread per channel (fitted on the 16 calibration crops).
Variants: a Gaussian window (round; zero-padded and divided by the window's own weight inside the
image, as the clipped square); the centre and spread fitted per position, so a border the generator's
padding reproduces worse, or a clipped window that averages fewer pixels, is measured against its own
normal level. Each variant is fitted on the first ``--fit-crops`` training crops (closed-form start, as
the fit calibrates), its scale calibrated as the product calibrates it, the map chosen on validation
with the fit's rule, and its validation figures printed. ``--pictures``: each variant's map on good
and defective validation crops.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from map_pictures import draw
from select_map import parts_of, prepared_model

from anomalib_rgi.data.textures import train_image_paths
from anomalib_rgi.inpainting import load_images
from anomalib_rgi.models.rgi.anomaly_map import CoarseResidual, describe_map, score_settings
from anomalib_rgi.models.rgi.map_selection import choose_settings, validation_image_auroc, validation_pixel_quality


def square_window_mean(images: torch.Tensor, window: int) -> torch.Tensor:
    """The part's former window: a square mean clipped at the border."""
    return F.avg_pool2d(images, window, stride=1, padding=window // 2, count_include_pad=False)


class CoarseVariant(CoarseResidual):
    def __init__(self, window: int, channels: int, shape: str, per_position: bool) -> None:
        super().__init__(window, channels)
        self.shape, self.per_position = shape, per_position
        sigma = window / 4
        offsets = torch.arange(-2 * window, 2 * window + 1, dtype=torch.float32)
        kernel = torch.exp(-offsets.square() / (2 * sigma**2))
        self.gaussian = (kernel / kernel.sum())[kernel > 1e-4 * kernel.max()]

    def window_mean(self, images: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        residual = images - start.clamp(-1, 1)
        if self.shape == "square":
            return square_window_mean(residual, self.window)
        pad = len(self.gaussian) // 2
        channels = residual.shape[1]

        def blur(x: torch.Tensor) -> torch.Tensor:
            across = self.gaussian.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
            rows = F.conv2d(x, across, padding=(0, pad), groups=channels)
            return F.conv2d(rows, across.transpose(2, 3), padding=(pad, 0), groups=channels)

        return blur(residual) / blur(torch.ones_like(residual[:1]))

    @torch.no_grad()
    def fit_normal(self, images: torch.Tensor, start: torch.Tensor) -> None:
        averaged = self.window_mean(images, start)
        dims = 0 if self.per_position else (0, 2, 3)
        self.centre = averaged.mean(dim=dims, keepdim=True)
        self.spread = averaged.std(dim=dims, keepdim=True).clamp_min(1e-6)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cache")
    parser.add_argument("checkpoint")
    parser.add_argument("--category", default="brick")
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    parser.add_argument("--fit-crops", type=int, nargs="+", default=[16, 240])
    parser.add_argument("--floor-quantile", type=float, default=0.9)
    parser.add_argument("--pictures", type=Path)
    args = parser.parse_args()
    cache = torch.load(args.cache, weights_only=False)
    model = prepared_model(args.checkpoint, args.data_root, args.category)
    inner, amap = model.model, model.model.anomaly_map
    train = load_images(train_image_paths(f"{args.data_root}/v2", args.category), 128)
    start = dict(amap.settings) | {"mask_floor": 0.0}
    shipped = amap.coarse_residual
    print(
        "| category | window | centre and spread | fit crops | map chosen on validation | val pixel AUROC "
        "| val Dice (best thr.) | val image AUROC |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for shape in ("square", "gaussian"):
        for per_position in (False, True):
            for crops in args.fit_crops:
                variant = CoarseVariant(shipped.window | 1, shipped.centre.shape[1], shape, per_position)
                good = inner.invert(train[:crops], steps=0, mask_solver="closed_form")
                variant.fit_normal(good.target, good.start)
                amap.coarse_residual = variant
                calibration = inner.invert(train[:16], steps=0, mask_solver="closed_form")
                mask_level = amap.mask_part(calibration).flatten().quantile(0.99)
                variant.scale = mask_level / variant(calibration.target, calibration.start).flatten().quantile(0.99)
                val = parts_of(model, cache["val"])
                kept = [(val, cache["val"]["gt"], cache["val"]["label"])]
                chosen, _, _ = choose_settings(kept, start, amap.candidates, args.floor_quantile)
                pixel_auroc, dice = validation_pixel_quality(kept, chosen)
                image_auroc = validation_image_auroc(kept, score_settings(chosen))
                where = "per position" if per_position else "per channel"
                print(
                    f"| {args.category} | {shape} | {where} | {crops} | {describe_map(chosen)} | {pixel_auroc:.3f} "
                    f"| {dice:.3f} | {image_auroc:.3f} |",
                    flush=True,
                )
                if args.pictures:
                    amap.set_settings(chosen)
                    name = f"{args.category}-{shape}-{where.replace(' ', '-')}-{crops}.png"
                    draw(model, cache["val"], args.pictures / name, title=f"{shape} window, {where}, {crops} crops")
    amap.coarse_residual = shipped


if __name__ == "__main__":
    main()
