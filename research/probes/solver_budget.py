"""Solver budgets on one prior: each variant's map chosen on validation, as a fit chooses it.

    python research/probes/solver_budget.py CKPT --category C --data-root R \
        --variants steps=10 steps=3,lr=0.6 steps=0,mask_solver=closed_form steps=200,finetune_steps=50 [--test]

Each variant overrides the checkpoint's inversion settings (steps, lr, mask_lr, mask_solver, lam);
its validation half is inverted, the map chosen among the model's candidates with the fit's rule
(map_selection.choose_settings) and its validation figures printed: pixel AUROC, Dice at the best
threshold, image AUROC of the chosen map. ``--test`` also inverts the test half and scores the map
each variant chose: for the final figures, once the variant is decided on validation.
"""

from __future__ import annotations

import argparse

from cache_inversions import invert_split
from select_map import figures, parts_of, prepared_model

from anomalib_rgi import RgiTextures
from anomalib_rgi.models.rgi.anomaly_map import describe_map, score_settings
from anomalib_rgi.models.rgi.map_selection import choose_settings, validation_image_auroc, validation_pixel_quality


def parse_variant(text: str) -> dict[str, float | str]:
    overrides: dict[str, float | str] = {}
    for item in text.split(","):
        name, value = item.split("=")
        counts = ("steps", "finetune_steps")
        overrides[name] = value if name == "mask_solver" else (int(value) if name in counts else float(value))
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--category", default="brick")
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    parser.add_argument("--variants", nargs="+", type=parse_variant, required=True)
    parser.add_argument("--floor-quantile", type=float, default=0.9)
    parser.add_argument("--test", action="store_true", help="also score the test half with each variant's choice")
    args = parser.parse_args()
    model = prepared_model(args.checkpoint, args.data_root, args.category)
    amap = model.model.anomaly_map
    start = dict(amap.settings) | {"mask_floor": 0.0}
    data = RgiTextures(root=args.data_root, category=args.category, version=2, eval_batch_size=20)
    data.prepare_data()
    data.setup()
    print(
        "| category | variant | map chosen on validation | val pixel AUROC | val Dice (best thr.) | val image AUROC "
        "| test pixel AUROC | test Dice (best thr.) | test image AUROC | inversion ms / image |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for overrides in args.variants:
        val, seconds = invert_split(model, data.val_dataloader(), overrides)
        val_parts = parts_of(model, val)
        kept = [(val_parts, val["gt"], val["label"])]
        chosen, _, _ = choose_settings(kept, start, amap.candidates, args.floor_quantile)
        pixel_auroc, dice = validation_pixel_quality(kept, chosen)
        image_auroc = validation_image_auroc(kept, score_settings(chosen))
        cells = [f"{pixel_auroc:.3f}", f"{dice:.3f}", f"{image_auroc:.3f}"]
        if args.test:
            test, seconds = invert_split(model, data.test_dataloader(), overrides)
            row = figures(parts_of(model, test), chosen, test)
            cells += [f"{row['pixel_AUROC']:.3f}", f"{row['Dice_best']:.3f}", f"{row['image_AUROC']:.3f}"]
        else:
            cells += ["-", "-", "-"]
        name = ", ".join(f"{k} {v}" for k, v in overrides.items())
        ms = 1000 * seconds / len(val["label"] if not args.test else test["label"])
        head = f"| {args.category} | {name} | {describe_map(chosen)} | "
        print(head + " | ".join(cells) + f" | {ms:.0f} |", flush=True)


if __name__ == "__main__":
    main()
