"""Networks of the GAN prior: a spatial-latent generator, the encoder that starts the inversion, a patch critic.

The latent is a grid (``latent_channels`` x H/s x W/s for a latent stride ``s``) rather than PGGAN's
global 512-d vector: industrial parts and textures are locally stationary, and a global vector cannot
hold the exact arrangement of a held-out texture. A spatial latent reproduces the part's fine
structure, and RGI's mask keeps the more expressive prior from copying defects. Pixel norm instead of
batch norm keeps every image independent, which R-RGI's per-image fine-tuning (vmap over weights) and
the ONNX export both rely on.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class PixelNorm(nn.Module):
    """Normalise each pixel's feature vector to unit average square (PGGAN)."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        """Normalise over channels."""
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


def _num_levels(image_size: int, latent_stride: int) -> int:
    levels = int(math.log2(latent_stride))
    if 2**levels != latent_stride or levels < 1:
        msg = f"latent_stride must be a power of two >= 2, got {latent_stride}."
        raise ValueError(msg)
    if image_size % latent_stride:
        msg = f"image size {image_size} must be a multiple of latent_stride {latent_stride}."
        raise ValueError(msg)
    return levels


def _widths(levels: int, base_channels: int) -> list[int]:
    """Channel width per resolution level, coarsest first, doubling towards the coarse end (max 256)."""
    return [min(base_channels * 2 ** (levels - level), 256) for level in range(levels + 1)]


class Generator(nn.Module):
    """Spatial-latent generator: ``(N, latent_channels, H/s, W/s)`` -> ``(N, C, H, W)`` in [-1, 1].

    Args:
        image_size (int): Side of the square output images.
        latent_stride (int): Downsampling factor between image and latent grid (power of two).
        latent_channels (int): Channels of the latent grid.
        base_channels (int): Width at full resolution; doubles at every coarser level.
        image_channels (int): Channels of the output images.

    """

    def __init__(
        self,
        image_size: int,
        latent_stride: int = 8,
        latent_channels: int = 16,
        base_channels: int = 16,
        image_channels: int = 3,
    ) -> None:
        super().__init__()
        levels = _num_levels(image_size, latent_stride)
        widths = _widths(levels, base_channels)
        self.latent_shape = (latent_channels, image_size // latent_stride, image_size // latent_stride)
        layers: list[nn.Module] = [nn.Conv2d(latent_channels, widths[0], 3, padding=1), nn.LeakyReLU(0.2), PixelNorm()]
        for in_width, out_width in pairwise(widths):
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(in_width, out_width, 3, padding=1),
                nn.LeakyReLU(0.2),
                PixelNorm(),
            ]
        layers += [nn.Conv2d(widths[-1], image_channels, 3, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """Generate images from latents."""
        return self.net(latent)

    def sample_latent(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``num`` latents from the prior N(0, I)."""
        device = next(self.parameters()).device
        return torch.randn(num, *self.latent_shape, generator=generator, device=device)


class Encoder(nn.Module):
    """Maps images in [-1, 1] to latents of the generator's grid (f-AnoGAN-style initialiser)."""

    def __init__(
        self,
        image_size: int,
        latent_stride: int = 8,
        latent_channels: int = 16,
        base_channels: int = 16,
        image_channels: int = 3,
    ) -> None:
        super().__init__()
        levels = _num_levels(image_size, latent_stride)
        widths = _widths(levels, base_channels)[::-1]
        layers: list[nn.Module] = [nn.Conv2d(image_channels, widths[0], 3, padding=1), nn.LeakyReLU(0.2)]
        for in_width, out_width in pairwise(widths):
            layers += [nn.Conv2d(in_width, out_width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(widths[-1], latent_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode images."""
        return self.net(images)


class Critic(nn.Module):
    """Spectral-norm patch critic: one realism logit per receptive field (hinge loss).

    Args:
        base_channels (int): Width at full resolution; doubles at every coarser level (max 256).
        image_channels (int): Channels of the images.
        levels (int): Stride-2 convolutions.
        normalise (bool): Spectral normalisation of every convolution (False: see :meth:`frozen`).

    """

    def __init__(
        self,
        base_channels: int = 16,
        image_channels: int = 3,
        levels: int = 3,
        normalise: bool = True,
    ) -> None:
        super().__init__()
        self.settings = {"base_channels": base_channels, "image_channels": image_channels, "levels": levels}
        widths = [min(base_channels * 2**level, 256) for level in range(levels + 1)]
        convs = [nn.Conv2d(image_channels, widths[0], 3, padding=1)]
        convs += [nn.Conv2d(in_width, out_width, 4, stride=2, padding=1) for in_width, out_width in pairwise(widths)]
        convs.append(nn.Conv2d(widths[-1], 1, 3, padding=1))
        if normalise:
            convs = [spectral_norm(conv) for conv in convs]
        layers: list[nn.Module] = []
        for conv in convs[:-1]:
            layers += [conv, nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers, convs[-1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Realism logits, ``(N, 1, h, w)``."""
        return self.net(images)

    def frozen(self) -> Critic:
        """Return a copy without spectral normalisation whose weights are the normalised ones.

        It gives the same logits as this critic in eval mode and, unlike it, can be pickled (PyTorch
        pickles no parametrised module): what a whole-module export such as anomalib's ``torch`` one
        needs. It no longer trains as a spectral-norm critic.

        Returns:
            Critic: The copy, in eval mode, on this critic's device.

        """
        plain = Critic(**self.settings, normalise=False).to(self.net[0].bias.device).eval()
        was_training = self.training
        self.eval()  # in training mode reading a normalised weight would run a power iteration
        with torch.no_grad():
            for source, target in zip(self.net, plain.net, strict=True):
                if isinstance(target, nn.Conv2d):
                    target.weight.copy_(source.weight)
                    target.bias.copy_(source.bias)
        self.train(was_training)
        return plain


def sample_diversity(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Spread of generated images across a batch relative to the real images' spread.

    The per-pixel standard deviation over the batch, averaged over pixels, of ``fake`` divided by
    that of ``real``: about 1 for a healthy generator, near 0 when every latent gives the same image
    (mode collapse), which no per-image loss shows.

    Args:
        fake (torch.Tensor): Generated images ``(N, C, H, W)``, ``N >= 2``.
        real (torch.Tensor): Training images ``(M, C, H, W)``, ``M >= 2``.

    Returns:
        torch.Tensor: The ratio (a scalar).

    """
    return fake.std(dim=0).mean() / real.std(dim=0).mean().clamp_min(1e-8)
