"""Does a feature residual whitened on good images find foreign material on grass (issue #5)?

The shipped :class:`~anomalib_rgi.models.rgi.torch_model.FeatureDistance` is ``1 - cos`` between the
input's ImageNet features and those of the prior's image ``G(E(x))``. On a stochastic texture the
prior's image is a blur of the grains, so that distance is high on normal texture too. This probe
learns, per feature level, the mean and covariance of the residual ``f(x) - f(G(E(x)))`` over the
positions of the good training crops, and scores each position by its Mahalanobis distance: a
residual in a direction that the blur of normal texture does not produce stands out.
``--references input`` whitens the input's own features instead (no prior involved: a location-free
PaDiM, the control that says how much of the signal needs the prior). Each reference is calibrated
as ``Rgi`` calibrates its map and added to the mask map at each weight (weight 0: the mask map
alone; ``Infinity``: the feature part alone); one JSON row per prior, reference, weight and half.

python experiments/feature_whitening.py --category grass --method encoder \
    --checkpoints results/gpu-2026-11-27d/grass-w8-s0-e30.ckpt
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from feature_map import feature_variant_rows, invert_halves, prior_with_feature_map, scoring_halves
from feature_space_probe import fit_gaussian
from prior_ensemble import METHODS

from anomalib_rgi.data.textures import train_image_paths
from anomalib_rgi.inpainting import load_images
from anomalib_rgi.models.rgi.torch_model import FeatureDistance


class WhitenedFeatureDistance(FeatureDistance):
    """Mahalanobis distance of a feature vector (``reference``) under a Gaussian fitted on good images."""

    reference = "cosine"  # "cosine" (shipped), "residual" or "input"
    gaussians: dict[str, list[tuple[torch.Tensor, torch.Tensor]]]

    def _vectors(self, images: torch.Tensor, restored: torch.Tensor) -> list[torch.Tensor]:
        """Per level, the vectors to whiten, ``(N, C, h, w)``."""
        both = torch.cat([images, restored]).expand(-1, 3, -1, -1)
        levels = []
        for level in self.features((both - self.mean) / self.std):
            image_features, restored_features = level.chunk(2)
            levels.append(image_features - restored_features if self.reference == "residual" else image_features)
        return levels

    def use(self, reference: str, images: torch.Tensor, restored: torch.Tensor) -> None:
        """Score with ``reference`` from now on, its Gaussians fitted on good ``images`` and their ``restored``."""
        self.reference = reference
        if reference != "cosine":
            self.fit(images, restored)

    @torch.no_grad()
    def fit(self, images: torch.Tensor, restored: torch.Tensor) -> None:
        """Fit each level's mean and inverse covariance, shrunk towards a multiple of the identity."""
        self.gaussians[self.reference] = [fit_gaussian(vectors) for vectors in self._vectors(images, restored)]

    def forward(self, images: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
        """Mean over the levels of the Mahalanobis distance per ``sqrt(C)``, upsampled to ``(N, 1, H, W)``."""
        if self.reference == "cosine":
            return super().forward(images, restored)
        distances, gaussians = [], self.gaussians[self.reference]
        for vectors, (mean, precision) in zip(self._vectors(images, restored), gaussians, strict=True):
            centred = vectors.permute(0, 2, 3, 1) - mean
            squared = torch.einsum("nhwc,cd,nhwd->nhw", centred, precision, centred).clamp_min(0)
            distance = (squared.sqrt() / len(mean) ** 0.5).unsqueeze(1)
            distances.append(F.interpolate(distance, size=images.shape[-2:], mode="bilinear", align_corners=False))
        return torch.stack(distances).mean(dim=0)


def main() -> None:
    """Score each prior once per half; the map for every reference and weight; print JSON rows."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", required=True)
    parser.add_argument("--checkpoints", nargs="+", type=Path, required=True)
    parser.add_argument("--method", default="encoder", choices=sorted(METHODS))
    parser.add_argument("--references", nargs="+", default=["cosine", "residual", "input"])
    parser.add_argument("--weights", nargs="+", type=float, default=[0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--fit-images", type=int, default=240, help="good training crops the Gaussians are fitted on")
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    args = parser.parse_args()
    halves = scoring_halves(args.data_root, args.category, ["validation", "test"])
    for checkpoint in args.checkpoints:
        model, train = prior_with_feature_map(checkpoint, args.data_root, args.category, "cpu")
        rgi = model.model
        distance = rgi.feature_distance
        distance.__class__ = WhitenedFeatureDistance
        distance.gaussians = {}
        good = load_images(train_image_paths(args.data_root, args.category, args.fit_images), rgi.image_size)
        good_start = (rgi.invert(good, steps=0, mask_solver="closed_form", finetune_steps=0).start.clamp(-1, 1) + 1) / 2
        inverted = invert_halves(rgi, halves, METHODS[args.method])

        variants = [({"reference": ref}, partial(distance.use, ref, good, good_start)) for ref in args.references]
        row = {"category": args.category, "checkpoint": str(checkpoint), "method": args.method}
        weights = [0.0, *args.weights, float("inf")]
        for quality in feature_variant_rows(rgi, train, inverted, variants, weights, row):
            print(json.dumps(quality), flush=True)


if __name__ == "__main__":
    main()
