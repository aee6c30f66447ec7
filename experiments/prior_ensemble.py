"""Does the mean map of several independently trained priors beat one prior (issue #5)?

Where a prior misplaces the grains of a normal stochastic texture its residual is its own; a
defect's residual is shared by every prior. The mean of K priors' maps should keep the defects and
average the normal texture's errors down, lifting pixel AUROC where RGI trails PatchCore (gravel).

For each checkpoint, half and method the anomaly maps are computed once and cached (``--cache``).
A method ``a+b`` scores each prior with the mean of its ``a`` and ``b`` maps. Rows (JSON, one per
line): the mean map of every subset of k priors, for each k in ``--sizes`` (default 1..K; 1: each
alone), and per k the mean over its subsets (what a user training k seeds gets on average). Pixel
AUROC, best dataset Dice and pixel AUROC per defect type, as the other experiment scripts report them.
Checkpoints of several epochs of one training run make a snapshot ensemble. ``--choose`` adds the one prior whose
validation-half Dice is best (among one run's epochs: what ``select_epoch_every`` keeps).

python experiments/prior_ensemble.py --category gravel --half test --methods encoder rrgi encoder+rrgi \
    --checkpoints results/ensemble/gravel-w8-s{0,1,2,3}-e20.ckpt
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from anomalib_rgi import Rgi
from anomalib_rgi.data.textures import load_test_split, split_defect_types
from anomalib_rgi.metrics import map_quality

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from benchmark_speed import preset_settings

FAST_SOLVER, _ = preset_settings(str(Path(__file__).parents[1] / "configs" / "rgi_fast.yaml"))

METHODS = {
    "encoder": {"steps": 0, "mask_solver": "closed_form", "finetune_steps": 0},
    "rgi": {"steps": 200, "mask_solver": "adam", "finetune_steps": 0},
    "rrgi": {"steps": 200, "mask_solver": "adam", "finetune_steps": 50, "finetune_lr": 1e-4},
    "fast": {**FAST_SOLVER, "finetune_steps": 0},  # the deployable preset's solver
}


def prior_maps(checkpoint: Path, images: torch.Tensor, settings: dict, cache: Path) -> np.ndarray:
    """Anomaly maps ``(N, H, W)`` of one prior, read from ``cache`` if this exact job ran before."""
    key = hashlib.sha256(
        checkpoint.read_bytes() + images.numpy().tobytes() + json.dumps(settings, sort_keys=True).encode()
    ).hexdigest()[:16]
    path = cache / f"{key}.npy"
    if path.exists():
        return np.load(path)
    torch.manual_seed(0)
    model = Rgi.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    maps = model.model.anomaly_map(model.model.invert(images, **settings))[:, 0].detach().numpy()
    cache.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".partial.npy")
    np.save(temporary, maps)
    temporary.replace(path)
    return maps


def method_maps(checkpoints: list[Path], images: torch.Tensor, method: str, cache: Path) -> list[np.ndarray]:
    """Each prior's maps for ``method``; ``a+b`` is the mean of the two scorings' maps."""
    return [
        np.mean([prior_maps(path, images, METHODS[part], cache) for part in method.split("+")], axis=0)
        for path in checkpoints
    ]


def main() -> None:
    """Score each prior and every ensemble of them; print one JSON row each."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", required=True)
    parser.add_argument("--checkpoints", nargs="+", type=Path, required=True)
    parser.add_argument("--half", default="test", choices=("validation", "test"))
    parser.add_argument("--methods", nargs="+", default=["encoder"], help=f"of {sorted(METHODS)}, or a+b")
    parser.add_argument("--sizes", nargs="+", type=int, default=None, help="ensemble sizes (default: 1 to K)")
    parser.add_argument(
        "--choose",
        action="store_true",
        help="with --half test: also the prior whose validation-half Dice is best (select_epoch_every's choice)",
    )
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    parser.add_argument("--cache", type=Path, default=Path("results/ensemble/maps"))
    args = parser.parse_args()
    if len(args.checkpoints) < 2:
        parser.error("an ensemble needs at least two --checkpoints")
    missing = [str(path) for path in args.checkpoints if not path.is_file()]
    if missing:
        parser.error(f"no such checkpoint: {', '.join(missing)}")
    unknown = sorted({part for method in args.methods for part in method.split("+")} - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {sorted(METHODS)} or join them with '+'")
    sizes = args.sizes or list(range(1, len(args.checkpoints) + 1))
    if not all(1 <= size <= len(args.checkpoints) for size in sizes):
        parser.error(f"--sizes must lie in 1..{len(args.checkpoints)}")
    if sum(math.comb(len(args.checkpoints), size) for size in sizes) > 2000:
        parser.error("over 2000 subsets to score: choose fewer --sizes (e.g. 1 and the number of checkpoints)")
    if args.choose and args.half != "test":
        parser.error("--choose chooses on the validation half and reports the test half: use --half test")
    images, masks = load_test_split(args.data_root, args.category, half=args.half)
    defects = split_defect_types(args.data_root, args.category, half=args.half)
    if args.choose:
        validation, validation_masks = load_test_split(args.data_root, args.category, half="validation")
        validation_defects = split_defect_types(args.data_root, args.category, half="validation")
    names = [path.stem for path in args.checkpoints]
    for method in args.methods:
        maps = method_maps(args.checkpoints, images, method, args.cache)
        row = {"category": args.category, "half": args.half, "method": method}
        if args.choose:
            dice = [
                map_quality(prior, validation_masks, validation_defects)["best_dataset_dice"]
                for prior in method_maps(args.checkpoints, validation, method, args.cache)
            ]
            chosen = int(np.argmax(dice))
            quality = map_quality(maps[chosen], masks, defects)
            print(json.dumps({**row, "priors": f"chosen on validation: {names[chosen]}", **quality}), flush=True)
        for size in sizes:
            qualities = []
            for subset in itertools.combinations(range(len(maps)), size):
                quality = map_quality(np.mean([maps[i] for i in subset], axis=0), masks, defects)
                qualities.append(quality)
                print(json.dumps({**row, "priors": [names[i] for i in subset], **quality}), flush=True)
            mean = {key: round(float(np.mean([q[key] for q in qualities])), 3) for key in qualities[0]}
            print(json.dumps({**row, "priors": f"mean over {len(qualities)} subsets of {size}", **mean}), flush=True)


if __name__ == "__main__":
    main()
