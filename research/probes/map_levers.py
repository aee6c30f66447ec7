"""Score candidate anomaly maps on cached inversions (cache_inversions.py), per defect kind.

    python research/probes/map_levers.py CACHE.pt CKPT [--split val] [--maps NAME ...]

Every part is brought to the mask map's units by matching 99th percentiles on the split's good images
(as AnomalyMap.calibrate does), so weights compare across parts.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.models.components import GaussianBlur2d
from sklearn.metrics import roc_auc_score

from anomalib_rgi import Rgi
from anomalib_rgi.metrics import best_dataset_dice, quality_per_defect
from anomalib_rgi.models.rgi.inversion import InversionResult

BLUR = GaussianBlur2d(sigma=4.0, channels=1)


def window_mean(values: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over size x size windows (odd size), at full resolution."""
    return F.avg_pool2d(values, size, stride=1, padding=size // 2, count_include_pad=False)


def pooled(residual: torch.Tensor, size: int) -> torch.Tensor:
    """|mean of the signed residual over size x size windows|."""
    return residual.abs() if size == 1 else window_mean(residual, size).abs()


def energy(residual: torch.Tensor, size: int) -> torch.Tensor:
    """Root mean square residual over size x size windows."""
    return window_mean(residual.square(), size).sqrt()


def local_std(image: torch.Tensor, size: int) -> torch.Tensor:
    return (window_mean(image.square(), size) - window_mean(image, size).square()).clamp_min(0).sqrt()


def candidate_parts(data: dict, model: Rgi) -> dict[str, torch.Tensor]:
    x, g, s, m = data["target"], data["restored"], data["start"], data["mask"]
    result = InversionResult(restored=g, mask=m, latent=torch.zeros(1), loss=torch.zeros(1), target=x, start=s)
    parts = {}
    with torch.no_grad():
        amap = model.model.anomaly_map
        parts["mask"] = amap.mask_part(result)
        if amap.feature_distance is not None:
            parts["fdist"] = torch.cat([amap._distance_part(r) for r in split_result(result)])
        if amap.feature_prior is not None and amap.feature_prior.fitted:
            parts["fprior"] = torch.cat([amap._prior_part(r) for r in split_result(result)])
        for name, ref in (("G", g), ("S", s)):
            r = (x - ref).mean(1, keepdim=True)
            for size in (1, 5, 9, 17, 33):
                parts[f"pool{size}-{name}"] = BLUR(pooled(r, size)) if size < 9 else pooled(r, size)
                parts[f"rms{size}-{name}"] = energy(r, size) if size > 1 else BLUR(r.abs())
        grey_start, grey = s.mean(1, keepdim=True), x.mean(1, keepdim=True)
        for size in (9, 17):
            texture_change = local_std(grey_start, size) - local_std(grey, size)
            parts[f"texloss{size}"] = texture_change.clamp_min(0)
            parts[f"texdiff{size}"] = texture_change.abs()
    return parts


def split_result(result: InversionResult, size: int = 20):
    for i in range(0, len(result.target), size):
        yield InversionResult(
            restored=result.restored[i : i + size],
            mask=result.mask[i : i + size],
            latent=result.latent,
            loss=result.loss,
            target=result.target[i : i + size],
            start=result.start[i : i + size],
        )


def calibrated(parts: dict[str, torch.Tensor], good: torch.Tensor) -> dict[str, torch.Tensor]:
    reference = parts["mask"][good].flatten().quantile(0.99)
    out = {}
    for name, part in parts.items():
        level = part[good].flatten()
        level = level[torch.randperm(len(level), generator=torch.Generator().manual_seed(0))[: 2**24 - 1]]
        out[name] = part * (reference / level.quantile(0.99).clamp_min(1e-6))
    return out


def score(name: str, amap: torch.Tensor, data: dict, kinds: np.ndarray) -> dict:
    maps = amap[:, 0].numpy()
    masks = data["gt"][:, 0].numpy() > 0.5
    scores = maps.reshape(len(maps), -1).max(1)
    labels = data["label"].numpy()
    per_kind = quality_per_defect(maps, masks.astype(np.float32), kinds, scores)
    return {
        "map": name,
        "pixel_AUROC": roc_auc_score(masks.ravel(), maps.ravel()),
        "Dice_best": best_dataset_dice(maps, masks),
        "image_AUROC": roc_auc_score(labels, scores),
        "kinds": per_kind,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cache")
    parser.add_argument("checkpoint")
    parser.add_argument("--split", default="val")
    parser.add_argument("--combos", nargs="*", default=[], help="NAME=part:w,part:w (mask floor: floor:q)")
    args = parser.parse_args()
    cache = torch.load(args.cache, weights_only=False)
    model = Rgi.load_from_checkpoint(args.checkpoint, map_location="cpu").eval()
    data = cache[args.split]
    kinds = np.array(data["kind"])
    good = torch.from_numpy(kinds == "good")
    parts = calibrated(candidate_parts(data, model), good)
    maps = dict(parts)
    for combo in args.combos:
        name, spec = combo.split("=")
        total = 0
        for item in spec.split(","):
            part, weight = item.split(":")
            if part == "floor":
                floor = maps["mask"][good].flatten().quantile(float(weight))
                total = total + (parts["mask"] - floor).clamp_min(0)
            else:
                total = total + float(weight) * parts[part]
        maps[name] = total
    rows = [score(name, amap, data, kinds) for name, amap in maps.items()]
    kind_names = sorted(rows[0]["kinds"])
    print(f"split {args.split}; per kind: image AUROC / pixel AUROC")
    print("| map | pix AUROC | Dice best | img AUROC | " + " | ".join(kind_names) + " |")
    for row in rows:
        cells = [f"{row['kinds'][k]['image_AUROC']:.2f}/{row['kinds'][k]['pixel_AUROC']:.2f}" for k in kind_names]
        head = f"| {row['map']} | {row['pixel_AUROC']:.3f} | {row['Dice_best']:.3f} | {row['image_AUROC']:.3f} | "
        print(head + " | ".join(cells) + " |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
