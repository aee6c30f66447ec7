"""Is the feature distance better when it tolerates misplaced grains (issue #5)?

A prior restores a stochastic texture with its grains in other places than the input's, so the
per-pixel feature distance is high on normal texture too. This probe takes, for each input feature,
the best cosine match among the restoration's features in a ``(2r+1) x (2r+1)`` window (r = 0 is the
shipped :class:`~anomalib_rgi.models.rgi.torch_model.FeatureDistance`), calibrates each as
``Rgi`` does, and prints one JSON row per prior, radius, weight and half.

python experiments/feature_window.py --category grass --method encoder \
    --checkpoints results/ensemble/grass-w8-s0-e30.ckpt
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from feature_map import feature_variant_rows, invert_halves, prior_with_feature_map, scoring_halves
from prior_ensemble import METHODS

from anomalib_rgi.models.rgi.torch_model import FeatureDistance


class WindowedFeatureDistance(FeatureDistance):
    """``1 - `` the best cosine between an input feature and the restoration's within ``radius`` cells."""

    radius = 0

    def forward(self, images: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
        """Mean over the feature levels, upsampled to ``(N, 1, H, W)``."""
        both = torch.cat([images, restored]).expand(-1, 3, -1, -1)
        size, distances = 2 * self.radius + 1, []
        for level in self.features((both - self.mean) / self.std):
            image_features, restored_features = F.normalize(level, dim=1).chunk(2)
            n, c, h, w = restored_features.shape
            padded = F.pad(restored_features, [self.radius] * 4, mode="replicate")
            window = F.unfold(padded, size).view(n, c, size * size, h, w)
            cosine = (image_features.unsqueeze(2) * window).sum(1).amax(1, keepdim=True)
            distances.append(F.interpolate(1 - cosine, size=images.shape[-2:], mode="bilinear", align_corners=False))
        return torch.stack(distances).mean(dim=0)


def main() -> None:
    """Score each prior once per half; the map for every radius and weight; print JSON rows."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", required=True)
    parser.add_argument("--checkpoints", nargs="+", type=Path, required=True)
    parser.add_argument("--method", default="encoder", choices=sorted(METHODS))
    parser.add_argument("--radii", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--weights", nargs="+", type=float, default=[0.5, 1.0, 2.0])
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    args = parser.parse_args()
    halves = scoring_halves(args.data_root, args.category, ["validation", "test"])
    for checkpoint in args.checkpoints:
        model, train = prior_with_feature_map(checkpoint, args.data_root, args.category, "cpu")
        rgi = model.model
        rgi.feature_distance.__class__ = WindowedFeatureDistance
        inverted = invert_halves(rgi, halves, METHODS[args.method])
        variants = [
            ({"radius": radius}, partial(setattr, rgi.feature_distance, "radius", radius)) for radius in args.radii
        ]
        row = {"category": args.category, "checkpoint": str(checkpoint), "method": args.method}
        for quality in feature_variant_rows(rgi, train, inverted, variants, args.weights, row):
            print(json.dumps(quality), flush=True)


if __name__ == "__main__":
    main()
