"""Where a density model of normal ImageNet features ranks on foreign material (issue #5, grass).

Every RGI map so far compares the input with a PIXEL prior's image; on grass the prior restores
normal texture as a blur, and the foreign patches are what it misses (lab notebook, sessions 6-15).
Session 15's control (a location-free Gaussian of the input's own features, no prior) reached 0.83
grass pixel AUROC at 128 px, PatchCore's memory bank 0.93 at 256 px. This probe asks, with no pixel
prior at all, on the features ``Rgi``'s feature map already computes (EfficientNet-Lite0 strides 8
and 16, the coarser level upsampled and concatenated, 3 x 3 averaged as PatchCore aggregates):

- ``gaussian``: the location-free Gaussian (the session-15 control, on the concatenated embedding);
- ``knn``: distance to the nearest training embedding (PatchCore without the coreset);
- ``autoencoder``: the residual of a small convolutional autoencoder trained on normal embeddings
  (a generative prior of FEATURES instead of pixels, scored at its encoder's latent);
- ``rgi``: the RGI objective on that prior: ``min over z, M of ||(1 - M) (f - G(z))||^2 + lam |M|``
  per position, from the encoder's latent, the mask in its closed form; the map is the residual.

at the network input sizes ``--sizes`` (128: as ``Rgi``; 256: as our PatchCore runs). Maps are
upsampled to the crops' 128 px and smoothed (sigma 4) before scoring; one JSON row per category,
input size, map and half, as the other probes report them (``map_quality``).

python experiments/feature_space_probe.py --categories grass gravel brick --out rows.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from feature_map import scoring_halves
from torchvision.transforms.v2.functional import gaussian_blur

from anomalib_rgi.data.textures import train_image_paths
from anomalib_rgi.inpainting import load_images
from anomalib_rgi.metrics import map_quality
from anomalib_rgi.models.rgi.torch_model import FeatureDistance, FeaturePrior


@torch.no_grad()
def embed(network: FeatureDistance, images: torch.Tensor, size: int) -> torch.Tensor:
    """``network.embed`` in batches of 32: ``(N, C, size / 8, size / 8)``."""
    return torch.cat([network.embed(batch, size) for batch in images.split(32)])


def fit_gaussian(vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and inverse covariance of ``(N, C, h, w)`` vectors, the covariance shrunk towards a multiple of 1."""
    flat = vectors.permute(0, 2, 3, 1).reshape(-1, vectors.shape[1]).double()
    mean = flat.mean(0)
    covariance = torch.cov((flat - mean).T)
    covariance += 0.01 * covariance.trace() / len(mean) * torch.eye(len(mean), dtype=torch.float64)
    return mean.float(), torch.linalg.inv(covariance).float()


def gaussian_map(train: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """Mahalanobis distance under one Gaussian of all training positions (shrunk covariance)."""
    mean, precision = fit_gaussian(train)
    centred = test.permute(0, 2, 3, 1) - mean
    return torch.einsum("nhwc,cd,nhwd->nhw", centred, precision, centred).clamp_min(0).sqrt()


def knn_map(train: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of each test position to its nearest training position."""
    bank = train.permute(0, 2, 3, 1).reshape(-1, train.shape[1])
    queries = test.permute(0, 2, 3, 1).reshape(-1, test.shape[1])
    nearest = torch.cat([torch.cdist(chunk, bank).min(dim=1).values for chunk in queries.split(2048)])
    return nearest.view(test.shape[0], *test.shape[2:])


def train_prior(embeddings: torch.Tensor, steps: int, batch_size: int = 32) -> FeaturePrior:
    """``Rgi``'s feature prior (``feature_prior_weight > 0``), fitted on normal embeddings."""
    prior = FeaturePrior(embeddings.shape[1])
    prior.fit(embeddings, steps, batch_size)
    return prior.eval()


def rgi_map(prior: FeaturePrior, test: torch.Tensor, lam: float, steps: int) -> torch.Tensor:
    """Residual energy after the RGI objective on features: z from the encoder, closed-form mask."""
    latent = prior.encoder(test).clone().requires_grad_(True)
    optimiser = torch.optim.Adam([latent], lr=0.05)
    for _ in range(steps):
        energy = (test - prior.generator(latent)).pow(2).mean(dim=1)
        keep = (lam / (2 * energy.detach().clamp_min(1e-12))).clamp(max=1.0)  # 1 - M, M in closed form
        loss = (keep.pow(2) * energy).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        return (test - prior.generator(latent)).pow(2).mean(dim=1)


def emit(row: dict, out: Path | None) -> None:
    """Print a JSON row, and append it to ``out`` so that a stopped run keeps what it measured."""
    print(json.dumps(row), flush=True)
    if out:
        with out.open("a") as file:
            file.write(json.dumps(row) + "\n")


MAPS = ("gaussian", "knn", "autoencoder", "rgi")


def density_map(
    name: str, prior: FeaturePrior, train: torch.Tensor, test: torch.Tensor, args: argparse.Namespace
) -> torch.Tensor:
    """The map ``name`` of ``MAPS`` for the test embeddings, ``(N, h, w)``."""
    if name == "gaussian":
        return gaussian_map(train, test)
    if name == "knn":
        return knn_map(train, test)
    if name == "autoencoder":
        return prior.residual(test)[:, 0]
    return rgi_map(prior, prior.standardise(test), args.lam, args.rgi_steps)


def main() -> None:
    """Print (and append to ``--out``) one row per category, input size, map and half."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--categories", nargs="+", default=["grass", "gravel", "brick"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--prior-steps", type=int, default=1000)
    parser.add_argument("--prior-batch", type=int, default=32, help="whole embedding grids per step")
    parser.add_argument("--maps", nargs="+", default=list(MAPS), choices=MAPS)
    parser.add_argument("--rgi-steps", type=int, default=100)
    parser.add_argument("--lam", type=float, default=1.0, help="in standardised feature units")
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    network = FeatureDistance().eval()
    for category in args.categories:
        good = load_images(train_image_paths(args.data_root, category), 128)
        halves = scoring_halves(args.data_root, category, ["validation", "test"])
        for size in args.sizes:
            train = embed(network, good, size)
            prior = train_prior(train, args.prior_steps, args.prior_batch)
            for half, (images, masks, defects) in halves.items():
                test = embed(network, images, size)
                for name in args.maps:
                    cells = density_map(name, prior, train, test, args)
                    upsampled = F.interpolate(cells[:, None], size=masks.shape[-2:], mode="bilinear")
                    scores = gaussian_blur(upsampled, kernel_size=33, sigma=4.0)[:, 0].numpy()
                    row = {"category": category, "size": size, "map": name, "half": half}
                    if name in {"autoencoder", "rgi"}:
                        row |= {"prior_steps": args.prior_steps, "prior_batch": args.prior_batch}
                    row |= map_quality(scores, masks, defects)
                    emit(row, args.out)


if __name__ == "__main__":
    main()
