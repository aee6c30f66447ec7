"""Does validation's map choice carry over to defects it has not seen? One defect kind left out at a time.

    python research/probes/leave_kind_out.py CACHE.pt CKPT --category C --data-root R [--floor-quantile 0.9]
        [--score-on test|val] [--drop-part feature_distance]

For each defect kind of the cached validation half, the map is chosen as a fit chooses it
(map_selection.choose_settings over the model's candidates) twice: on the whole validation half, and
on it without that kind's defective images. Both choices are scored on the test half's images of that
kind beside the good test images (metrics.quality_per_defect: pixel AUROC, dataset-level Dice at the
best threshold over those images, image AUROC). A choice that holds only when its kind is in
validation loses figures in the "left out" column. ``--score-on val`` scores each kind on the
validation half's own images of it instead, which the blind choice did not see: a check that leaves
the test half untouched, for method decisions. ``--drop-part``: that part leaves the candidates. The
GAN epoch was chosen by the fit with every kind in validation; only the map's choice is left blind here.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from select_map import parts_of, prepared_model

from anomalib_rgi.metrics import quality_per_defect
from anomalib_rgi.models.rgi.anomaly_map import ADDED_PARTS, describe_map, score_settings, weigh
from anomalib_rgi.models.rgi.map_selection import choose_settings


def kept_without(parts: dict, data: dict, left_out: str | None) -> list:
    """The validation half as the fit keeps it, without ``left_out``'s defective images."""
    rows = torch.tensor([kind != left_out for kind in data["kind"]])
    return [({name: part[rows] for name, part in parts.items()}, data["gt"][rows], data["label"][rows])]


def kind_figures(parts: dict, settings: dict, data: dict, kind: str) -> dict[str, float]:
    maps = weigh(parts, settings)[:, 0].numpy()
    scores = weigh(parts, score_settings(settings))[:, 0].flatten(1).amax(1).numpy()
    masks = data["gt"][:, 0].numpy() > 0.5
    kinds = np.array(data["kind"])
    chosen = (kinds == kind) | (kinds == "good")
    return quality_per_defect(maps[chosen], masks[chosen].astype(np.float32), kinds[chosen], scores[chosen])[kind]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cache")
    parser.add_argument("checkpoint")
    parser.add_argument("--category", default="brick")
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    parser.add_argument("--floor-quantile", type=float, default=0.9)
    parser.add_argument("--score-on", default="test", choices=("test", "val"))
    parser.add_argument("--drop-part", choices=ADDED_PARTS, help="leave this part out of the candidates")
    args = parser.parse_args()
    cache = torch.load(args.cache, weights_only=False)
    model = prepared_model(args.checkpoint, args.data_root, args.category)
    amap = model.model.anomaly_map
    val = parts_of(model, cache["val"])
    test = parts_of(model, cache["test"]) if args.score_on == "test" else None
    start = dict(amap.settings) | {"mask_floor": 0.0}
    candidates = [weights for weights in amap.candidates if not (args.drop_part and weights[args.drop_part])]
    every, _, _ = choose_settings(kept_without(val, cache["val"], None), start, candidates, args.floor_quantile)
    print(f"{args.category}, chosen on the whole validation half: {describe_map(every)}; scored on {args.score_on}")
    print(
        "| kind | val / test images | map chosen without it | pixel AUROC: all / left out | Dice (best thr.): "
        "all / left out | image AUROC: all / left out |"
    )
    print("|---|---|---|---|---|---|")
    kinds = sorted(set(cache["val"]["kind"]) - {"good"})
    totals = np.zeros((2, 3))
    counted = 0
    for kind in kinds:
        scored, scored_parts = (cache["test"], test) if args.score_on == "test" else (cache["val"], val)
        if kind not in scored["kind"]:
            continue
        kept = kept_without(val, cache["val"], kind)
        blind, _, _ = choose_settings(kept, start, candidates, args.floor_quantile)
        rows = [kind_figures(scored_parts, settings, scored, kind) for settings in (every, blind)]
        figures = np.array([[row["pixel_AUROC"], row["pixel_F1Max"], row["image_AUROC"]] for row in rows])
        totals += figures
        counted += 1
        same = "the same" if blind == every else describe_map(blind)
        counts = f"{cache['val']['kind'].count(kind)} / {cache['test']['kind'].count(kind)}"
        cells = " | ".join(f"{figures[0, i]:.3f} / {figures[1, i]:.3f}" for i in range(3))
        print(f"| {kind} | {counts} | {same} | {cells} |", flush=True)
    mean = totals / counted
    print("| mean over kinds | | | " + " | ".join(f"{mean[0, i]:.3f} / {mean[1, i]:.3f}" for i in range(3)) + " |")


if __name__ == "__main__":
    main()
