"""Robust GAN inversion (RGI) and its relaxed variant (R-RGI) as plain functions of tensors.

The solver minimises, for every image ``x`` of a batch independently,

    L(z, M) = sum((1 - M)^2 * (x - G(z))^2) + lam * sum(|M|) - critic_weight * mean(D(G(z)))

over the latent ``z`` and a mask ``M`` of the image's shape (per pixel and channel), with Adam, as in
the authors' code. ``M`` may instead be eliminated with its closed-form optimum for the current
residual ``r``, ``m(r) = max(0, 1 - lam / (2 r^2))`` (``mask_solver="closed_form"``); ``"none"``
turns the solver into plain, non-robust inversion (AnoGAN's search), the baseline RGI improves on.

R-RGI (``finetune_steps > 0``) continues from the RGI solution while also optimising a private copy
of the generator's weights for each image; the trained weights are never modified.

Nothing here depends on Lightning; the functions run under ``torch.inference_mode`` too (the
gradients are computed in a local ``inference_mode(False)`` block on cloned inputs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call, vmap

MaskSolver = Literal["adam", "closed_form", "none", "given"]
MASK_SOLVERS: tuple[str, ...] = ("adam", "closed_form", "none", "given")


@dataclass
class InversionResult:
    """Output of :func:`invert`; every tensor has the batch as first dimension.

    Attributes:
        restored (torch.Tensor): ``G(z)``, the restored (inpainted) image, in [-1, 1], ``(N, C, H, W)``.
        mask (torch.Tensor): The sparse mask ``M`` (or the residual ``x - G(z)`` for
            ``mask_solver="none"``), ``(N, C, H, W)``.
        latent (torch.Tensor): The optimised latent ``z``.
        loss (torch.Tensor): The final objective per image, ``(N,)``.
        target (torch.Tensor): The inverted images themselves, in [-1, 1], ``(N, C, H, W)``.
        start (torch.Tensor): The trained generator's image at the starting latent, ``G(z_0)``, in
            [-1, 1], ``(N, C, H, W)``: the prior's guess before the steps (and R-RGI's fine-tuning)
            could fit a defect.

    """

    restored: torch.Tensor
    mask: torch.Tensor
    latent: torch.Tensor
    loss: torch.Tensor
    target: torch.Tensor
    start: torch.Tensor


def is_tracing() -> bool:
    """Whether the call is being traced for export (value checks cannot run then)."""
    from torch.fx.experimental.proxy_tensor import get_proxy_mode  # noqa: PLC0415

    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export() or get_proxy_mode() is not None


def closed_form_mask(residual: torch.Tensor, lam: float) -> torch.Tensor:
    """Optimal mask for a fixed residual: ``argmin_m (1 - m)^2 r^2 + lam * |m|``.

    Args:
        residual (torch.Tensor): ``x - G(z)``.
        lam (float): Sparsity weight.

    Returns:
        torch.Tensor: ``max(0, 1 - lam / (2 r^2))``, in [0, 1).

    """
    return torch.clamp(1.0 - lam / (2.0 * residual.square()).clamp_min(1e-12), min=0.0)


def robust_objective(
    images: torch.Tensor,
    restored: torch.Tensor,
    mask: torch.Tensor | None,
    lam: float,
) -> torch.Tensor:
    """Compute the data term of RGI per image: ``sum((1 - M)^2 (x - G(z))^2) + lam * sum(|M|)``.

    Args:
        images (torch.Tensor): Targets ``x``, ``(N, C, H, W)``.
        restored (torch.Tensor): ``G(z)``, same shape.
        mask (torch.Tensor | None): ``M``; ``None`` gives the plain squared error.
        lam (float): Sparsity weight.

    Returns:
        torch.Tensor: One value per image, ``(N,)``.

    """
    residual = images - restored
    if mask is None:
        return residual.square().flatten(1).sum(1)
    return ((1.0 - mask).square() * residual.square() + lam * mask.abs()).flatten(1).sum(1)


def realism(critic: Callable[[torch.Tensor], torch.Tensor], restored: torch.Tensor) -> torch.Tensor:
    """Compute the critic's mean realism logit per image, ``mean(D(G(z)))``: the authors' prior term.

    Args:
        critic (Callable): Frozen critic; returns a logit (map) per image.
        restored (torch.Tensor): ``G(z)``, ``(N, C, H, W)``.

    Returns:
        torch.Tensor: One value per image, ``(N,)``.

    """
    return critic(restored).flatten(1).mean(1)


def best_of_pool(generator: nn.Module, images: torch.Tensor, pool: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Pick, for every image, the pool latent whose generated image is nearest in pixel L2.

    This is the authors' initialisation (a fixed pool of 1000 random latents).

    Args:
        generator (nn.Module): Maps latents to images in [-1, 1].
        images (torch.Tensor): Targets in [-1, 1], ``(N, C, H, W)``.
        pool (torch.Tensor): Candidate latents, ``(P, ...)``.
        chunk (int): How many candidates to generate at once.

    Returns:
        torch.Tensor: ``(N, ...)`` latents, one chosen candidate per image.

    """
    best_distance = torch.full((images.shape[0],), float("inf"), device=images.device)
    best_index = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)
    flat_images = images.flatten(1)
    with torch.no_grad():
        for start in range(0, pool.shape[0], chunk):
            candidates = generator(pool[start : start + chunk]).flatten(1)
            distance = torch.cdist(flat_images, candidates)
            value, index = distance.min(dim=1)
            better = value < best_distance
            best_distance = torch.where(better, value, best_distance)
            best_index = torch.where(better, index + start, best_index)
    return pool[best_index].clone()


@dataclass
class _AdamState:
    first: torch.Tensor
    second: torch.Tensor
    lr: float
    steps: int = 0


def _adam_step(
    params: list[torch.Tensor],
    grads: tuple[torch.Tensor, ...],
    states: list[_AdamState],
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """Elementwise Adam, so every image's slice of a batched parameter evolves independently."""
    beta1, beta2 = betas
    for param, grad, state in zip(params, grads, states, strict=True):
        state.steps += 1
        step, first, second, lr = state.steps, state.first, state.second, state.lr
        first.mul_(beta1).add_(grad, alpha=1 - beta1)
        second.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        first_hat = first / (1 - beta1**step)
        second_hat = second / (1 - beta2**step)
        # eps as a tensor, not a scalar: OpenVINO's CPU plugin (2026.4) evaluates x / (sqrt(v) + scalar
        # eps) as if eps were 0, which turns tiny gradients into full steps and zero ones into NaN.
        param.sub_(lr * first_hat / (second_hat.sqrt() + torch.full_like(second_hat, eps)))


def check_settings(lam: float, steps: int, mask_solver: str, finetune_steps: int, mask_given: bool) -> None:
    """Refuse solver settings :func:`invert` cannot run, naming what is wrong.

    Raises:
        ValueError: On an unknown solver, negative step counts, Adam's mask without a step, a given
            mask without ``mask_solver="given"`` (or the reverse), or a non-positive ``lam`` for a robust solver.

    """
    if mask_solver not in MASK_SOLVERS:
        msg = f"mask_solver must be one of {MASK_SOLVERS}, got {mask_solver!r}."
        raise ValueError(msg)
    if steps < 0 or finetune_steps < 0:
        msg = f"Need steps >= 0 and finetune_steps >= 0; got {steps} and {finetune_steps}."
        raise ValueError(msg)
    if steps + finetune_steps == 0 and mask_solver == "adam":
        # Without steps the other solvers still give a map (the start's residual or its closed-form
        # mask: the encoder-only, f-AnoGAN-style baseline); the Adam mask would stay all zero.
        msg = 'mask_solver="adam" needs at least one step.'
        raise ValueError(msg)
    if (mask_solver == "given") != mask_given:
        msg = 'given_mask is required by, and only used with, mask_solver="given".'
        raise ValueError(msg)
    if mask_solver not in {"none", "given"} and not lam > 0:
        msg = f"lam must be positive for robust inversion, got {lam}."
        raise ValueError(msg)


def invert(
    generator: nn.Module,
    images: torch.Tensor,
    latent_init: torch.Tensor,
    *,
    lam: float = 0.4,
    steps: int = 2000,
    lr: float = 0.1,
    mask_lr: float = 0.1,
    mask_solver: MaskSolver = "adam",
    critic: Callable[[torch.Tensor], torch.Tensor] | None = None,
    critic_weight: float = 0.0,
    finetune_steps: int = 0,
    finetune_lr: float = 1e-5,
    given_mask: torch.Tensor | None = None,
) -> InversionResult:
    """Robust GAN inversion of a batch; R-RGI when ``finetune_steps > 0``.

    RGI runs ``steps`` joint Adam steps on ``z`` and ``M``; R-RGI then runs ``finetune_steps`` more
    in which each image's own copy of the generator weights is optimised as well (the authors' code:
    2000 steps in all, weights frozen for the first 500).

    Args:
        generator (nn.Module): Trained generator; its weights are read, never written.
        images (torch.Tensor): Images in [-1, 1], ``(N, C, H, W)``.
        latent_init (torch.Tensor): Starting latents, ``(N, ...)``.
        lam (float): Sparsity weight ``lambda`` of ``||M||_1``.
        steps (int): Adam steps on ``z`` (and ``M``) with the generator frozen.
        lr (float): Learning rate of ``z``.
        mask_lr (float): Learning rate of ``M`` (``mask_solver="adam"``).
        mask_solver (MaskSolver): ``"adam"`` (authors), ``"closed_form"`` or ``"none"`` (plain
            inversion; the returned ``mask`` is then the residual ``x - G(z)``).
        critic (Callable | None): Frozen critic for the realism term.
        critic_weight (float): Weight ``lambda_D`` of ``-mean(D(G(z)))``.
        finetune_steps (int): R-RGI steps with per-image generator weights (0: plain RGI).
        finetune_lr (float): Learning rate of the generator weights.
        given_mask (torch.Tensor | None): For ``mask_solver="given"``: the KNOWN corrupted region
            (1 = ignore the pixel), held fixed; inversion then fits only the known pixels (Yeh et al.
            with mask, or Pan et al. with ``finetune_steps``).

    Returns:
        InversionResult: Restored images, masks, latents, final losses and the starting images.

    Raises:
        ValueError: On an unknown solver, negative step counts, a non-positive ``lam`` for a robust
            solver, mismatched batch sizes or non-finite inputs.

    """
    check_settings(lam, steps, mask_solver, finetune_steps, given_mask is not None)
    if latent_init.shape[0] != images.shape[0]:
        msg = f"latent_init has {latent_init.shape[0]} rows for {images.shape[0]} images."
        raise ValueError(msg)
    if not is_tracing() and not torch.isfinite(images).all():
        msg = "images contain NaN or Inf values."
        raise ValueError(msg)

    with torch.inference_mode(False), torch.enable_grad():
        target = images.detach().clone()
        latent = latent_init.detach().clone().requires_grad_(True)
        mask = torch.zeros_like(target, requires_grad=True) if mask_solver == "adam" else None
        if given_mask is not None:
            mask = given_mask.to(target).expand_as(target).clone()
        weights = {name: param.detach() for name, param in generator.named_parameters()}
        batch_size = target.shape[0]

        def generate(latents: torch.Tensor, per_image: dict[str, torch.Tensor] | None) -> torch.Tensor:
            if per_image is None:
                return functional_call(generator, weights, (latents,))
            return vmap(lambda p, z: functional_call(generator, p, (z.unsqueeze(0),)).squeeze(0))(per_image, latents)

        def objective(restored: torch.Tensor) -> torch.Tensor:
            # closed form: envelope theorem, the optimal mask is treated as a constant in z
            current_mask = closed_form_mask((target - restored).detach(), lam) if mask_solver == "closed_form" else mask
            loss = robust_objective(target, restored, current_mask, lam)
            if critic is not None and critic_weight:
                loss = loss - critic_weight * realism(critic, restored)
            return loss

        start = None  # the prior's image at latent_init: the first step's forward pass, kept
        params = [latent] + ([mask] if mask_solver == "adam" else [])
        states = [_AdamState(torch.zeros_like(latent), torch.zeros_like(latent), lr)]
        if mask_solver == "adam":
            states.append(_AdamState(torch.zeros_like(mask), torch.zeros_like(mask), mask_lr))
        per_image = None
        for step in range(1, steps + finetune_steps + 1):
            if step == steps + 1:
                per_image = {
                    name: value.unsqueeze(0).repeat(batch_size, *([1] * value.dim())).requires_grad_(True)
                    for name, value in weights.items()
                }
                params = params + list(per_image.values())
                states += [
                    _AdamState(torch.zeros_like(p), torch.zeros_like(p), finetune_lr) for p in per_image.values()
                ]
            generated = generate(latent, per_image)
            if start is None:
                start = generated.detach()
            loss = objective(generated).sum()
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                _adam_step(params, grads, states)

        with torch.no_grad():
            if start is None:
                start = generate(latent, None)
            restored = generate(latent, per_image) if steps + finetune_steps else start
            if mask_solver == "closed_form":
                mask = closed_form_mask(target - restored, lam)
            final_loss = objective(restored)
            final_mask = target - restored if mask_solver == "none" else mask.detach()
        return InversionResult(
            restored=restored.detach().clone(),
            mask=final_mask.detach().clone(),
            latent=latent.detach().clone(),
            loss=final_loss.detach().clone(),
            target=target,
            start=start,
        )
