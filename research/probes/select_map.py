"""Choose a prior's map on a cached validation half as a fit would, then score the test half.

    python research/probes/select_map.py CACHE.pt CKPT [--category C] [--floor-quantile 0.9] [--recalibrate]

The cache (cache_inversions.py) holds both halves; the choice is the product's own
(map_selection.choose_settings over the model's candidates). Prints the test figures of the map the
checkpoint saved (the fit's own choice), of the map chosen again on the cached validation half, of the
paper's mask map and of the GAN prior's own map (the same choice among the candidates
without ImageNet parts), overall and per defect kind.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from anomalib_rgi import Rgi, RgiTextures
from anomalib_rgi.metrics import best_dataset_dice, quality_per_defect
from anomalib_rgi.models.rgi.anomaly_map import ADDED_PARTS, FEATURE_PARTS, describe_map, score_settings, weigh
from anomalib_rgi.models.rgi.inversion import InversionResult
from anomalib_rgi.models.rgi.map_selection import choose_settings


def parts_of(model: Rgi, data: dict) -> dict[str, torch.Tensor]:
    chunks = []
    for i in range(0, len(data["target"]), 20):
        rows = {k: data[k][i : i + 20] for k in ("target", "restored", "start", "mask")}
        result = InversionResult(latent=torch.zeros(1), loss=torch.zeros(1), **rows)
        with torch.no_grad():
            chunks.append(model.model.anomaly_map.parts(result))
    return {name: torch.cat([chunk[name] for chunk in chunks]) for name in chunks[0]}


def prepared_model(checkpoint: str, data_root: str, category: str, recalibrate: bool = False) -> Rgi:
    """The prior as a ``best_on_validation`` model, parts it was fitted without prepared as scoring would.

    ``recalibrate``: the coarse residual is calibrated again (its centre and spread included), for a
    prior calibrated before the part was centred.
    """
    model = Rgi.load_from_checkpoint(checkpoint, map_location="cpu", anomaly_map="best_on_validation").eval()
    if recalibrate:
        model.model.anomaly_map.coarse_residual.scale.fill_(float("nan"))
    if model.model.unprepared_parts:
        data = RgiTextures(root=data_root, category=category, version=2)
        data.prepare_data()
        data.setup()
        good = torch.cat([batch.image for batch in data.train_dataloader()])
        model.model.prepare_feature_parts(good)
    return model


def figures(parts: dict, settings: dict, data: dict) -> dict:
    maps = weigh(parts, settings)[:, 0].numpy()
    scores = weigh(parts, score_settings(settings))[:, 0].flatten(1).amax(1).numpy()
    masks = data["gt"][:, 0].numpy() > 0.5
    kinds = np.array(data["kind"])
    return {
        "pixel_AUROC": roc_auc_score(masks.ravel(), maps.ravel()),
        "Dice_best": best_dataset_dice(maps, masks),
        "image_AUROC": roc_auc_score(data["label"].numpy(), scores),
        "kinds": quality_per_defect(maps, masks.astype(np.float32), kinds, scores),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cache")
    parser.add_argument("checkpoint")
    parser.add_argument("--floor-quantile", type=float, default=0.9)
    parser.add_argument(
        "--data-root", default="datasets/rgi_textures", help="training images, to prepare unfitted parts"
    )
    parser.add_argument("--category", default="brick")
    parser.add_argument("--recalibrate", action="store_true", help="calibrate the coarse residual again")
    args = parser.parse_args()
    cache = torch.load(args.cache, weights_only=False)
    model = prepared_model(args.checkpoint, args.data_root, args.category, args.recalibrate)
    amap = model.model.anomaly_map
    val, test = parts_of(model, cache["val"]), parts_of(model, cache["test"])
    kept = [(val, cache["val"]["gt"], cache["val"]["label"])]
    saved = dict(amap.settings)  # the fit's own choice, as the checkpoint scores
    start = saved | {"mask_floor": 0.0}
    chosen, dice, report = choose_settings(kept, start, amap.candidates, args.floor_quantile)
    print(f"chosen on validation: {describe_map(chosen)} (validation Dice {dice:.3f})")
    for name, row in report.items():
        print(f"  val {name}: " + " / ".join(f"{k} {v:.3f}" for k, v in row.items()))
    own_candidates = [weights for weights in amap.candidates if not any(weights[part] for part in FEATURE_PARTS)]
    own, own_dice, _ = choose_settings(kept, start, own_candidates, args.floor_quantile)
    print(f"GAN prior's own map chosen on validation: {describe_map(own)} (validation Dice {own_dice:.3f})")
    mask_only = dict.fromkeys(ADDED_PARTS, 0.0) | {"mask_floor": 0.0}
    rows = {"saved": saved, "chosen": chosen, "own": own, "mask": mask_only}
    kind_names = None
    print("test half; per kind image AUROC / pixel AUROC / best-thr. Dice")
    for label, settings in rows.items():
        row = figures(test, settings, cache["test"])
        kind_names = kind_names or sorted(row["kinds"])
        if label == "saved":
            print("| map | pixel AUROC | Dice (best thr.) | image AUROC | " + " | ".join(kind_names) + " |")
        cells = [
            "{image_AUROC:.2f}/{pixel_AUROC:.2f}/{pixel_F1Max:.2f}".format(**row["kinds"][kind]) for kind in kind_names
        ]
        head = f"| {label}: {describe_map(settings)} | {row['pixel_AUROC']:.3f} | {row['Dice_best']:.3f} | "
        print(head + f"{row['image_AUROC']:.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
