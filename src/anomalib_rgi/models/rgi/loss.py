"""Losses that train the RGI prior: a hinge GAN whose generator also reconstructs through an encoder.

The adversarial term makes ``G`` a generative prior (random latents give plausible normal images);
the reconstruction term ``|G(E(x')) - x|`` (with ``x'`` a randomly corrupted copy of ``x``) gives the
high fidelity on held-out normal images that inversion needs, trains the encoder that starts the
inversion, and teaches it to ignore gross corruption; the moment penalty keeps encoded latents
distributed like the prior N(0, I) that random latents are drawn from.
"""

from __future__ import annotations

import torch
from torch import nn


def corrupt(images: torch.Tensor, fraction: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Paste a random-valued rectangle into a random ``fraction`` of the images (in [-1, 1]).

    Args:
        images (torch.Tensor): ``(N, C, H, W)`` in [-1, 1].
        fraction (float): Share of the batch that is corrupted.
        generator (torch.Generator | None): Random source.

    Returns:
        torch.Tensor: A corrupted copy; each chosen image gets one box of 1/16 to 1/4 of its side,
        filled with one random grey value.
    """
    out = images.clone()
    num, _, height, width = images.shape
    device = images.device
    chosen = torch.rand(num, generator=generator, device=device) < fraction
    for index in torch.nonzero(chosen).flatten().tolist():
        box_h = int(torch.randint(height // 16 + 1, height // 4 + 1, (1,), generator=generator, device=device))
        box_w = int(torch.randint(width // 16 + 1, width // 4 + 1, (1,), generator=generator, device=device))
        top = int(torch.randint(0, height - box_h + 1, (1,), generator=generator, device=device))
        left = int(torch.randint(0, width - box_w + 1, (1,), generator=generator, device=device))
        value = torch.rand(1, generator=generator, device=device) * 2 - 1
        out[index, :, top : top + box_h, left : left + box_w] = value
    return out


def latent_moment_penalty(latent: torch.Tensor) -> torch.Tensor:
    """Squared distance of each latent channel's batch mean and variance from N(0, 1)'s."""
    flat = latent.transpose(0, 1).flatten(1)
    return flat.mean(dim=1).square().mean() + (flat.var(dim=1) - 1).square().mean()


class GeneratorLoss(nn.Module):
    """Loss of generator and encoder: adversarial + reconstruction + latent moments.

    Args:
        adversarial_weight (float): Weight of ``-D(G(.))`` on random and encoded latents.
        reconstruction_weight (float): Weight of the mean absolute reconstruction error.
        latent_weight (float): Weight of :func:`latent_moment_penalty`.
    """

    def __init__(
        self,
        adversarial_weight: float = 1.0,
        reconstruction_weight: float = 10.0,
        latent_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.adversarial_weight = adversarial_weight
        self.reconstruction_weight = reconstruction_weight
        self.latent_weight = latent_weight

    def forward(
        self,
        images: torch.Tensor,
        reconstruction: torch.Tensor,
        encoded: torch.Tensor,
        critic_fake_random: torch.Tensor,
        critic_fake_reconstruction: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Return the total loss and its parts (for logging)."""
        adversarial = -critic_fake_random.mean() - critic_fake_reconstruction.mean()
        reconstruction_error = (reconstruction - images).abs().mean()
        moments = latent_moment_penalty(encoded)
        total = (
            self.adversarial_weight * adversarial
            + self.reconstruction_weight * reconstruction_error
            + self.latent_weight * moments
        )
        return {"loss": total, "adversarial": adversarial, "reconstruction": reconstruction_error, "latent": moments}


class CriticLoss(nn.Module):
    """Hinge loss of the critic on real images and both kinds of generated images."""

    @staticmethod
    def forward(
        critic_real: torch.Tensor,
        critic_fake_random: torch.Tensor,
        critic_fake_reconstruction: torch.Tensor,
    ) -> torch.Tensor:
        """Return the critic's loss."""
        real = torch.relu(1.0 - critic_real).mean()
        fake = torch.relu(1.0 + critic_fake_random).mean() + torch.relu(1.0 + critic_fake_reconstruction).mean()
        return real + 0.5 * fake
