"""Cache one prior's inversions of a built-in category's validation and test halves, for map probes.

    python research/probes/cache_inversions.py CKPT CATEGORY OUT.pt [--data-root R] [--version 2]
        [--steps N] [--finetune-steps N] [--mask-solver closed_form] [--splits val test]

Writes, per split, the images, restorations, starts (G at the encoder's latent), masks, ground truth,
labels and defect kinds, so candidate anomaly maps can be scored without inverting again.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from anomalib_rgi import Rgi, RgiTextures


def invert_split(model: Rgi, loader, overrides: dict, progress: str | None = None) -> tuple[dict, float]:
    """Invert every batch of ``loader``; return the cache's rows of the split and the seconds it took.

    ``progress``: print the split's name, the images done and the seconds after every batch.
    """
    rows: dict[str, list] = {k: [] for k in ("target", "restored", "start", "mask", "gt", "label", "kind")}
    started = time.perf_counter()
    for batch in loader:
        images = model.pre_processor(batch.image) if model.pre_processor else batch.image
        with torch.no_grad():
            result = model.model.invert(images, **overrides)
        for name in ("target", "restored", "start", "mask"):
            rows[name].append(getattr(result, name))
        rows["gt"].append(batch.gt_mask.float().reshape(len(images), 1, *images.shape[-2:]))
        rows["label"].append(batch.gt_label.long())
        rows["kind"] += [Path(path).parent.name for path in batch.image_path]
        if progress:
            print(progress, len(rows["kind"]), f"{time.perf_counter() - started:.0f} s", flush=True)
    seconds = time.perf_counter() - started
    return {k: (v if k == "kind" else torch.cat(v)) for k, v in rows.items()}, seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("category")
    parser.add_argument("out")
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    parser.add_argument("--version", type=int, default=2)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--finetune-steps", type=int)
    parser.add_argument("--mask-solver", choices=("adam", "closed_form"), help="closed_form for 0 steps")
    parser.add_argument("--splits", nargs="+", default=["val", "test"], choices=("val", "test"))
    args = parser.parse_args()
    model = Rgi.load_from_checkpoint(args.checkpoint, map_location="cpu").eval()
    overrides = {
        k: v
        for k, v in {
            "steps": args.steps,
            "finetune_steps": args.finetune_steps,
            "mask_solver": args.mask_solver,
        }.items()
        if v is not None
    }
    data = RgiTextures(root=args.data_root, category=args.category, version=args.version, eval_batch_size=20)
    data.prepare_data()
    data.setup()
    cache = {"settings": {**model.model.inversion, **overrides}}
    loaders = {"val": data.val_dataloader, "test": data.test_dataloader}
    for split in args.splits:
        cache[split], _ = invert_split(model, loaders[split](), overrides, progress=split)
    torch.save(cache, args.out)


if __name__ == "__main__":
    main()
