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


def soft_region(
    top: int, left: int, box_h: int, box_w: int, height: int, width: int, device: torch.device
) -> torch.Tensor:
    """Return a soft-edged weight in [0, 1], ``(1, H, W)``: a Gaussian ellipse on the box, radii its half-sides."""
    rows = (torch.arange(height, device=device) - (top + box_h / 2)) / (box_h / 2)
    cols = (torch.arange(width, device=device) - (left + box_w / 2)) / (box_w / 2)
    return torch.exp(-0.5 * (rows.view(-1, 1).square() + cols.view(1, -1).square())).unsqueeze(0)


def corrupt(
    images: torch.Tensor, fraction: float = 0.5, generator: torch.Generator | None = None, faint: bool = False
) -> torch.Tensor:
    """Plant one corruption in a random ``fraction`` of the images (in [-1, 1]).

    The corruptions imitate what the encoder must learn to look through. Gross ones: a box of 1/16 to
    1/3 of the side filled with a constant grey, with the same place of ANOTHER image of the batch
    (foreign material), or with the image's own content shifted in brightness. With ``faint``, half of
    them are soft-edged instead (a Gaussian-falloff ellipse of the same sizes): a translucent veil of a
    random colour at 0.2-0.6 opacity, a shading change of 0.05-0.25 of the range per channel (which
    also shifts hue), or the region's texture blurred away at kept mean, so that the encoder's start
    does not reproduce faint, smooth defects either.

    Args:
        images (torch.Tensor): ``(N, C, H, W)`` in [-1, 1].
        fraction (float): Share of the batch that is corrupted.
        generator (torch.Generator | None): Random source.
        faint (bool): Also draw the soft-edged, low-contrast corruptions.

    Returns:
        torch.Tensor: A corrupted copy.

    """
    out = images.clone()
    num, channels, height, width = images.shape
    device = images.device

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high, (1,), generator=generator, device=device))

    def uniform(low: float, high: float, size: tuple[int, ...] = (1,)) -> torch.Tensor:
        return low + (high - low) * torch.rand(size, generator=generator, device=device)

    chosen = torch.rand(num, generator=generator, device=device) < fraction
    for index in torch.nonzero(chosen).flatten().tolist():
        box_h, box_w = draw(height // 16 + 1, height // 3 + 1), draw(width // 16 + 1, width // 3 + 1)
        top, left = draw(0, height - box_h + 1), draw(0, width - box_w + 1)
        region = (index, slice(None), slice(top, top + box_h), slice(left, left + box_w))
        kind = draw(0, 6 if faint else 3)
        if kind == 0:
            out[region] = torch.rand(1, generator=generator, device=device) * 2 - 1
        elif kind == 1:
            out[region] = images[((index + draw(1, max(num, 2))) % num, *region[1:])]
        elif kind == 2:
            shift = (torch.rand(1, generator=generator, device=device) - 0.5) * 1.6
            out[region] = (images[region] + shift).clamp(-1, 1)
        else:
            weight, image = soft_region(top, left, box_h, box_w, height, width, device), images[index]
            if kind == 3:
                colour = uniform(-1, 1, (channels, 1, 1))
                out[index] = image + weight * uniform(0.2, 0.6) * (colour - image)
            elif kind == 4:
                sign = 1.0 if draw(0, 2) else -1.0
                out[index] = (image + weight * sign * uniform(0.1, 0.5, (channels, 1, 1))).clamp(-1, 1)
            else:
                blurred = nn.functional.avg_pool2d(image[None], 9, stride=1, padding=4, count_include_pad=False)[0]
                out[index] = image + weight * (blurred - image)
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
