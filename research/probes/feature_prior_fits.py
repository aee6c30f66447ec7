"""The feature prior alone as a map, fitted in closed form or by the autoencoder, on the validation half.

    python research/probes/feature_prior_fits.py --data-root R --categories brick fabric grass gravel
        [--ae-steps 1000 200] [--pca 8 16 32] [--shrinkage 0.01 ...] [--per-position] [--window 3]
        [--input-size 256] [--out rows.md]

Embeds the 240 good training crops and the validation half with the product's embedding
(``FeatureDistance.embed`` at a 256 px network input, or ``--input-size``), fits each candidate prior on the training
embeddings and scores the validation half with its residual alone, as the map reads it (upsampled,
Gaussian sigma 4). Candidates: the autoencoder shipped before the closed form (:class:`AutoencoderPrior`)
at each step count; the residual off a PCA subspace of the standardised embeddings (k components,
shared by every position); the Mahalanobis distance under one Gaussian shared by every position (shrunk
covariance; ``--per-position``: the centre per position, as shipped). Prints fit time, pixel AUROC,
best-threshold Dice and image AUROC (the map's maximum) per candidate.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.models.components import GaussianBlur2d
from sklearn.metrics import roc_auc_score

from anomalib_rgi.data.textures import build_category, load_test_split, train_image_paths
from anomalib_rgi.inpainting import load_images
from anomalib_rgi.metrics import best_dataset_dice
from anomalib_rgi.models.rgi.feature_parts import FeatureDistance


class AutoencoderPrior(torch.nn.Module):
    """The feature prior as shipped before the closed form (git 7caa0df): a conv autoencoder fitted by Adam."""

    def __init__(self, channels: int, latent_channels: int = 16, width: int = 128) -> None:
        super().__init__()
        nn = torch.nn
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(width, latent_channels, 3, padding=1)
        )
        self.generator = nn.Sequential(
            nn.Conv2d(latent_channels, width, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(width, channels, 3, padding=1)
        )

    def fit(self, embeddings: torch.Tensor, steps: int, batch_size: int = 32) -> None:
        seed = torch.Generator().manual_seed(0)
        self.centre = embeddings.mean(dim=(0, 2, 3), keepdim=True)
        self.spread = embeddings.std(dim=(0, 2, 3), keepdim=True) + 1e-6
        standard = (embeddings - self.centre) / self.spread
        optimiser = torch.optim.Adam(self.parameters(), lr=1e-3)
        for _ in range(steps):
            batch = standard[torch.randint(len(standard), (batch_size,), generator=seed)]
            loss = (self.generator(self.encoder(batch)) - batch).square().mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()

    @torch.no_grad()
    def residual(self, embeddings: torch.Tensor) -> torch.Tensor:
        standard = (embeddings - self.centre) / self.spread
        return (standard - self.generator(self.encoder(standard))).square().mean(dim=1, keepdim=True)


def embed_all(features: FeatureDistance, images: torch.Tensor, size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([features.embed(batch, size) for batch in images.split(32)])


def linear_residual(
    train: torch.Tensor,
    kind: str,
    k: int = 0,
    shrinkage: float = 0.01,
    window: int = 1,
    per_position: bool | str = False,
):
    """Fit a closed-form prior on standardised embeddings; return the residual function.

    ``window`` > 1: the vectors are the window's neighbourhoods (C * window^2 entries); ``per_position``:
    the centre is each position's own mean (``"spread"``: the spread too; the covariance stays shared).
    """
    centre = train.mean(dim=(0, 2, 3) if not per_position else 0, keepdim=True)
    spread = train.std(dim=(0, 2, 3) if per_position != "spread" else 0, keepdim=True) + 1e-6

    def vectors_of(embeddings: torch.Tensor) -> torch.Tensor:
        standard = (embeddings - centre) / spread
        if window > 1:
            standard = F.unfold(standard, window, padding=window // 2).view(len(standard), -1, *standard.shape[-2:])
        return standard

    dim = train.shape[1] * window**2
    covariance = torch.zeros(dim, dim, dtype=torch.float64)
    for chunk in train.split(16):
        vectors = vectors_of(chunk).permute(0, 2, 3, 1).reshape(-1, dim).double()
        covariance += vectors.T @ vectors
    covariance /= train.shape[0] * train.shape[2] * train.shape[3]
    values, bases = torch.linalg.eigh(covariance)  # ascending
    if kind == "pca":
        complement = bases[:, :-k]  # the directions normal embeddings hardly use
        projection = (complement @ complement.T).float()
    else:
        scale = (values + shrinkage * values.mean()).rsqrt()
        projection = ((bases * scale) @ bases.T).float()

    def residual(embeddings: torch.Tensor) -> torch.Tensor:
        return torch.einsum("dc,nchw->ndhw", projection, vectors_of(embeddings)).square().mean(dim=1, keepdim=True)

    return residual


def fit_ae(train: torch.Tensor, steps: int):
    prior = AutoencoderPrior(train.shape[1])
    prior.fit(train, steps)
    return prior.residual


def score(residual_fn, embeddings: torch.Tensor, masks: np.ndarray, blur: GaussianBlur2d) -> dict:
    with torch.no_grad():
        maps = torch.cat([residual_fn(batch) for batch in embeddings.split(32)])
        maps = blur(F.interpolate(maps, size=masks.shape[-2:], mode="bilinear", align_corners=False))[:, 0].numpy()
    labels = masks.reshape(len(masks), -1).any(1)
    return {
        "pixel AUROC": roc_auc_score(masks.ravel(), maps.ravel()),
        "best-thr. Dice": best_dataset_dice(maps.ravel(), masks.ravel()),
        "image AUROC": roc_auc_score(labels, maps.reshape(len(maps), -1).max(1)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    parser.add_argument("--categories", nargs="+", default=["brick", "fabric", "grass", "gravel"])
    parser.add_argument("--ae-steps", type=int, nargs="*", default=[1000, 200])
    parser.add_argument("--pca", type=int, nargs="*", default=[8, 16, 32])
    parser.add_argument("--shrinkage", type=float, nargs="+", default=[0.01])
    parser.add_argument("--per-position", action="store_true", help="also: the centre per position")
    parser.add_argument("--window", type=int, default=1, help="also: Mahalanobis over window x window neighbourhoods")
    parser.add_argument("--input-size", type=int, default=256, help="the network's input side in pixels")
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.manual_seed(0)
    features = FeatureDistance().eval()
    blur = GaussianBlur2d(sigma=4.0, channels=1)
    lines = ["| category | prior | fit s | pixel AUROC | best-thr. Dice | image AUROC |", "|---|---|---|---|---|---|"]
    root = f"{args.data_root}/v2"
    for category in args.categories:
        build_category(root, category, version=2)
        train = load_images(train_image_paths(root, category), 128)
        val_images, val_masks = load_test_split(root, category, half="validation")
        started = time.time()
        train_embeddings = embed_all(features, train, args.input_size)
        val_embeddings = embed_all(features, val_images, args.input_size)
        print(category, f"embedded {len(train)} + {len(val_images)} crops in {time.time() - started:.1f} s", flush=True)
        candidates = {}
        for steps in args.ae_steps:
            candidates[f"autoencoder, {steps} steps"] = lambda steps=steps, train=train_embeddings: fit_ae(train, steps)
        for k in args.pca:
            candidates[f"PCA residual, k={k}"] = lambda k=k, train=train_embeddings: linear_residual(train, "pca", k)
        for shrinkage in args.shrinkage:
            candidates[f"Mahalanobis, shrinkage {shrinkage}"] = lambda shrinkage=shrinkage, train=train_embeddings: (
                linear_residual(train, "mahalanobis", shrinkage=shrinkage)
            )
        if args.per_position:
            candidates["Mahalanobis, centre per position"] = lambda train=train_embeddings: linear_residual(
                train, "mahalanobis", shrinkage=args.shrinkage[0], per_position=True
            )
            candidates["Mahalanobis, centre and spread per position"] = lambda train=train_embeddings: linear_residual(
                train, "mahalanobis", shrinkage=args.shrinkage[0], per_position="spread"
            )
        if args.window > 1:
            candidates[f"Mahalanobis, {args.window} x {args.window} neighbourhoods"] = lambda train=train_embeddings: (
                linear_residual(train, "mahalanobis", shrinkage=args.shrinkage[0], window=args.window)
            )
        for name, fit in candidates.items():
            started = time.time()
            residual_fn = fit()
            seconds = time.time() - started
            row = score(residual_fn, val_embeddings, val_masks, blur)
            line = f"| {category} | {name} | {seconds:.1f} | " + " | ".join(f"{v:.3f}" for v in row.values()) + " |"
            print(line, flush=True)
            lines.append(line)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
