"""Does a sharper mask or a narrower coarse window keep thin defects beside a heavy coarse part?

    python research/probes/thin_levers.py CACHE.pt CKPT --category fabric --data-root ROOT
        [--sigmas 4 2 1] [--windows 33 17]

For each mask smoothing ``sigma`` and coarse window, every added part is calibrated again on the
training crops (as a fit does), the product's choice is made on the cached validation half and the
test half is scored: overall and per kind (image AUROC / pixel AUROC / best-thr. Dice). ``--coarse-floors``
sets the coarse residual's floor at other quantiles of its level on the good validation crops than the
mask floor's (the product learns both at ``mask_floor_quantile``; 0: no coarse floor).
"""

from __future__ import annotations

import argparse
import itertools

import torch
from anomalib.models.components import GaussianBlur2d
from select_map import figures, parts_of

from anomalib_rgi import Rgi, RgiTextures
from anomalib_rgi.models.rgi.anomaly_map import CoarseResidual, describe_map
from anomalib_rgi.models.rgi.map_selection import choose_settings, good_level


def use_windows(part: CoarseResidual, windows: list[int]) -> None:
    """Make ``part`` average its centred residual over several window sizes (one: the product's part)."""
    channels = part.centre.shape[1] // len(getattr(part, "windows", [part.window]))
    part.windows = windows
    part.window = windows[0]
    part.centre = torch.zeros(1, channels * len(windows), 1, 1)
    part.spread = torch.ones(1, channels * len(windows), 1, 1)

    scales = [CoarseResidual(side, channels) for side in windows]

    def window_mean(images: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        return torch.cat([scale.window_mean(images, start) for scale in scales], dim=1)

    part.window_mean = window_mean


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cache")
    parser.add_argument("checkpoint")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--category", default="fabric")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[4.0, 2.0, 1.0])
    parser.add_argument(
        "--windows", nargs="+", default=["33", "17"], help="a window, or several joined by + (their parts averaged)"
    )
    parser.add_argument("--floor-quantile", type=float, default=0.9)
    parser.add_argument(
        "--coarse-floors",
        type=float,
        nargs="+",
        default=[0.0],
        help="quantiles of the coarse part on the good validation crops subtracted from it (0: none)",
    )
    args = parser.parse_args()
    cache = torch.load(args.cache, weights_only=False)
    model = Rgi.load_from_checkpoint(args.checkpoint, map_location="cpu", anomaly_map="best_on_validation").eval()
    data = RgiTextures(root=args.data_root, category=args.category, version=2)
    data.prepare_data()
    data.setup()
    good = torch.cat([batch.image for batch in data.train_dataloader()])
    net = model.model
    if net.unprepared_parts:
        net.prepare_feature_parts(good)
    amap = net.anomaly_map
    printed_header = False
    for sigma, window in itertools.product(args.sigmas, args.windows):
        amap.blur = GaussianBlur2d(sigma=sigma, channels=1) if sigma > 0 else None
        use_windows(amap.coarse_residual, [int(side) for side in window.split("+")])
        net.calibrate_feature_scale(good[:32])
        val, test = parts_of(model, cache["val"]), parts_of(model, cache["test"])
        kept = [(val, cache["val"]["gt"], cache["val"]["label"])]
        mask_floor = good_level(kept, args.floor_quantile)
        for quantile in args.coarse_floors:
            coarse_floor = good_level(kept, quantile, "coarse_residual") if quantile else 0.0
            floors = {"mask_floor": mask_floor, "coarse_floor": coarse_floor}
            # Quantile 0: the floors given are kept, the weights chosen as a fit chooses them.
            chosen, dice, _ = choose_settings(kept, amap.settings | floors, amap.candidates, 0.0)
            row = figures(test, chosen, cache["test"])
            kinds = sorted(row["kinds"])
            if not printed_header:
                printed_header = True
                print(
                    "| sigma | window | coarse floor (quantile) | chosen map | val Dice | pixel AUROC "
                    "| Dice (best thr.) | image AUROC | " + " | ".join(kinds) + " |",
                    flush=True,
                )
            cells = ["{image_AUROC:.2f}/{pixel_AUROC:.2f}/{pixel_F1Max:.2f}".format(**row["kinds"][k]) for k in kinds]
            print(
                f"| {sigma:g} | {window} | {quantile:g} | {describe_map(chosen)} | {dice:.3f} | "
                f"{row['pixel_AUROC']:.3f} | {row['Dice_best']:.3f} | {row['image_AUROC']:.3f} | "
                + " | ".join(cells)
                + " |",
                flush=True,
            )


if __name__ == "__main__":
    main()
