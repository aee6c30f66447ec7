"""RGI's mask map plus a feature-space prior's residual: does it lift R-RGI on grass (issue #5)?

``feature_space_probe.py`` found that a small autoencoder of normal EfficientNet-Lite0 embeddings,
read at a 256 px network input, scores grass's foreign material as well as a PatchCore-like memory
bank, with no pixel prior at all. This probe adds that residual to a trained prior's mask map in
place of the shipped feature part (``1 - cos`` between the input's features and G(E(x))'s at 128 px),
calibrated as ``Rgi`` calibrates its map, at each weight (0: the mask alone; ``inf``: the feature part
alone). Variants of the feature part:

- ``cosine``: the shipped map;
- ``prior``: ``Rgi``'s feature prior part (``feature_prior_weight``): the feature prior's residual of
  the input at 256 px (fitted on every good training crop; the restoration is not used).
  (Session 21's ``prior-256`` was this probe's own autoencoder, 3000 steps of 32 grids; its
  ``cosine-256``, the shipped map at 256 px, did not help and is gone.)

python experiments/feature_prior_map.py --category grass --method rrgi --checkpoints <model.ckpt>
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch
from feature_map import feature_variant_rows, invert_halves, prior_with_feature_map, scoring_halves
from feature_space_probe import emit
from prior_ensemble import METHODS

from anomalib_rgi.data.textures import train_image_paths
from anomalib_rgi.inpainting import load_images
from anomalib_rgi.models.rgi.torch_model import FeaturePrior

PARTS = {"cosine": "restoration", "prior": "prior"}  # the map part each variant scores


def use_variant(rgi: torch.nn.Module, variant: str, good: torch.Tensor, prior_steps: int) -> None:
    """Score ``rgi`` with ``variant`` from now on; ``prior`` first fits the feature prior on ``good``."""
    if variant == "cosine":
        rgi.feature_prior = None
        return
    rgi.feature_prior = FeaturePrior(sum(rgi.feature_distance.features.feature_info.channels()))
    rgi.fit_feature_prior(good, prior_steps)


def main() -> None:
    """Score each prior once per half; the map for every variant and weight; print JSON rows."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", required=True)
    parser.add_argument("--checkpoints", nargs="+", type=Path, required=True)
    parser.add_argument("--method", default="rrgi", choices=sorted(METHODS))
    parser.add_argument("--variants", nargs="+", default=["cosine", "prior"], choices=["cosine", "prior"])
    parser.add_argument("--weights", nargs="+", type=float, default=[0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--prior-steps", type=int, default=1000)
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    halves = scoring_halves(args.data_root, args.category, ["validation", "test"])
    for checkpoint in args.checkpoints:
        model, train = prior_with_feature_map(checkpoint, args.data_root, args.category, "cpu")
        rgi = model.model
        good = load_images(train_image_paths(args.data_root, args.category), rgi.image_size)
        inverted = invert_halves(rgi, halves, METHODS[args.method])
        row = {"category": args.category, "checkpoint": str(checkpoint), "method": args.method}
        for variant in args.variants:
            set_up = partial(use_variant, rgi, variant, good, args.prior_steps)
            weights = [0.0, *args.weights, float("inf")]
            part = PARTS[variant]
            for quality in feature_variant_rows(
                rgi, train, inverted, [({"variant": variant}, set_up)], weights, row, part
            ):
                emit(quality, args.out)


if __name__ == "__main__":
    main()
