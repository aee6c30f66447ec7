"""The RGI model in torch: the GAN prior, the robust inversion that scores images, and its anomaly map.

:class:`RgiModel` holds the networks (:mod:`.networks`), inverts images with the plain solver of
:mod:`.inversion`, cuts large images into tiles (:mod:`.tiling`) and turns an inversion into anomalib's
predictions through :class:`~.anomaly_map.AnomalyMap`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from typing import Any

import torch
from anomalib.data import InferenceBatch
from torch import nn

from .anomaly_map import AnomalyMap, MapKind, image_score
from .inversion import MASK_SOLVERS, InversionResult, best_of_pool, check_settings, invert, is_tracing
from .networks import Critic, Encoder, Generator
from .tiling import tile, untile

# The solver settings a model holds, with the values Rgi uses unless told otherwise. lam and steps are
# Rgi arguments of their own; the rest are the authors' (lr, mask_lr, mask_solver) or ours.
SOLVER_DEFAULTS: dict[str, Any] = {
    "lam": 0.02,
    "steps": 200,
    "lr": 0.1,
    "mask_lr": 0.1,
    "mask_solver": "adam",
    "critic_weight": 0.0,
    "finetune_steps": 0,
    "finetune_lr": 1e-4,
}
LATENT_INITS = ("encoder", "pool")


def _float32(like: torch.Tensor) -> torch.autocast:
    """Score in float32 under a mixed-precision trainer (``precision="bf16-mixed"``).

    The mask is non-zero where the squared residual exceeds ``lam / 2`` (0.01 by default): bfloat16's
    8-bit mantissa cannot resolve that, and its restored images and maps would reach anomalib's
    metrics and visualiser in a type they do not read. Training may still use mixed precision.
    """
    return torch.autocast(like.device.type, enabled=False)


def check_solver(settings: dict[str, Any]) -> None:
    """Refuse when the model is built what :func:`~.inversion.invert` would refuse at the first scoring.

    Raises:
        ValueError: On an unknown setting or an invalid value, naming the valid ones.

    """
    unknown = sorted(set(settings) - set(SOLVER_DEFAULTS))
    if unknown:
        msg = f"Unknown inversion settings {unknown}; the settings are {sorted(SOLVER_DEFAULTS)}."
        raise ValueError(msg)
    solver = settings.get("mask_solver", "adam")
    if solver == "given":  # a model has no known mask to give
        msg = f"mask_solver must be one of {[name for name in MASK_SOLVERS if name != 'given']}, got {solver!r}."
        raise ValueError(msg)
    for name in ("steps", "finetune_steps"):
        if int(settings.get(name, 0)) != settings.get(name, 0):
            msg = f"{name} must be a whole number of steps >= 0, got {settings[name]!r}."
            raise ValueError(msg)
    merged = {**SOLVER_DEFAULTS, **settings}
    check_settings(merged["lam"], merged["steps"], solver, merged["finetune_steps"], mask_given=False)
    for name in ("lam", "lr", "mask_lr", "finetune_lr"):
        if name in settings and not settings[name] > 0:
            msg = f"{name} must be positive, got {settings[name]!r}."
            raise ValueError(msg)
    if settings.get("critic_weight", 0.0) < 0:
        msg = f"critic_weight must be 0 or positive, got {settings['critic_weight']!r}."
        raise ValueError(msg)


class RgiModel(nn.Module):
    """The GAN prior plus the robust inversion that scores images.

    Args:
        image_size (int): Side of the square images the prior is trained on.
        image_channels (int): Channels of the images.
        input_size (int | None): Side of the images this model scores (``None``: ``image_size``). A
            multiple of ``image_size``: each image is cut into ``image_size`` tiles side by side, every
            tile is inverted on its own and the maps and restorations are stitched back.
        latent_stride (int): Downsampling factor of the spatial latent.
        latent_channels (int): Channels of the spatial latent.
        base_channels (int): Width of the networks at full resolution.
        solver (dict[str, Any] | None): Inversion settings over :data:`SOLVER_DEFAULTS`.
        latent_init (str): ``"encoder"`` or ``"pool"`` (best of ``pool_size`` random latents).
        pool_size (int): Size of the random latent pool for ``latent_init="pool"``.
        anomaly_map (MapKind): Which map scores the images (:class:`~.anomaly_map.AnomalyMap`).
        feature_weight (float | list[float]): Weight (or candidate weights) of the part the map adds to the mask.
        map_sigma (float): Gaussian smoothing of the map, in pixels (0: none).
        learn_mask_floor (bool): The mask floor is learned on validation (until then scoring refuses).

    """

    def __init__(
        self,
        image_size: int = 128,
        image_channels: int = 3,
        input_size: int | None = None,
        latent_stride: int = 8,
        latent_channels: int = 8,
        base_channels: int = 8,
        solver: dict[str, Any] | None = None,
        latent_init: str = "encoder",
        pool_size: int = 256,
        anomaly_map: MapKind = "mask",
        feature_weight: float | list[float] = 0.5,
        map_sigma: float = 4.0,
        learn_mask_floor: bool = False,
    ) -> None:
        super().__init__()
        input_size = input_size or image_size
        if input_size < image_size or input_size % image_size:
            msg = f"input_size must be a multiple of the prior's image_size ({image_size}), got {input_size}."
            raise ValueError(msg)
        check_solver(solver or {})
        if latent_init not in LATENT_INITS:
            msg = f"latent_init must be one of {LATENT_INITS}, got {latent_init!r}."
            raise ValueError(msg)
        if pool_size < 1:
            msg = f"pool_size must be at least 1, got {pool_size}."
            raise ValueError(msg)
        self.image_size = image_size
        self.image_channels = image_channels
        self.input_size = input_size
        self.generator = Generator(image_size, latent_stride, latent_channels, base_channels, image_channels)
        self.encoder = Encoder(image_size, latent_stride, latent_channels, base_channels, image_channels)
        self.critic = Critic(base_channels, image_channels)
        self.inversion = {**SOLVER_DEFAULTS, **(solver or {})}
        self.latent_init = latent_init
        self.pool_size = pool_size
        self.anomaly_map = AnomalyMap(
            anomaly_map, feature_weight, map_sigma, image_size, image_channels, learn_floor=learn_mask_floor
        )
        # Saved with the weights: lets export and scoring refuse a prior that was never trained.
        self.register_buffer("trained_steps", torch.zeros((), dtype=torch.long))

    @property
    def tiles_per_side(self) -> int:
        """How many of the prior's tiles span an input image's side."""
        return self.input_size // self.image_size

    def tile(self, images: torch.Tensor) -> torch.Tensor:
        """Cut input images into the prior's tiles (:func:`~.tiling.tile`)."""
        return tile(images, self.tiles_per_side)

    def untile(self, tiles: torch.Tensor) -> torch.Tensor:
        """Stitch per-tile maps or images back to the input size (:func:`~.tiling.untile`)."""
        return untile(tiles, self.tiles_per_side)

    def check_images(self, images: torch.Tensor) -> None:
        """Refuse inputs the prior was not trained for, with a message that says what to change.

        Raises:
            ValueError: Wrong rank, channel count or size, or non-finite values.

        """
        expected = (self.image_channels, self.input_size, self.input_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            msg = (
                f"This RGI model scores images of shape (N, {expected[0]}, {expected[1]}, {expected[2]}), got "
                f"{tuple(images.shape)}. Resize inputs with the model's pre-processor (anomalib does this "
                "for you) and give them the trained number of channels; for larger images, set input_size "
                "(they are then cut into tiles of the prior's image_size)."
            )
            raise ValueError(msg)
        if not is_tracing() and not torch.isfinite(images).all():
            msg = "Input images contain NaN or Inf values; RGI cannot score them."
            raise ValueError(msg)

    def initial_latent(self, images: torch.Tensor) -> torch.Tensor:
        """Return the starting latents for the inversion of ``images`` (in [-1, 1])."""
        if self.latent_init == "encoder":
            with torch.no_grad():
                return self.encoder(images)
        seed = torch.Generator(device="cpu").manual_seed(0)
        pool = self.generator.sample_latent(self.pool_size, generator=None if images.is_cuda else seed)
        return best_of_pool(self.generator, images, pool)

    def invert(self, images: torch.Tensor, **overrides: float | str) -> InversionResult:
        """Robustly invert images given in [0, 1]; the result is in the generator's [-1, 1] units.

        With tiling (``input_size > image_size``) the result holds one row per tile (:meth:`untile`
        stitches its tensors back).

        Args:
            images (torch.Tensor): ``(N, C, input_size, input_size)`` in [0, 1].
            **overrides: Inversion settings for this call only, replacing those of ``self.inversion``
                (e.g. ``mask_solver="closed_form", lam=0.05``).

        Raises:
            ValueError: On a setting ``self.inversion`` does not have, or images the prior cannot score.

        """
        unknown = sorted(set(overrides) - set(self.inversion))
        if unknown:
            msg = f"Unknown inversion settings {unknown}; the settings are {sorted(self.inversion)}."
            raise ValueError(msg)
        self.check_images(images)
        scaled = self.tile(images) * 2.0 - 1.0
        with _float32(images):
            return invert(
                self.generator,
                scaled,
                self.initial_latent(scaled),
                critic=self.critic,
                **{**self.inversion, **overrides},
            )

    @torch.no_grad()
    def fit_feature_prior(self, images: torch.Tensor) -> None:
        """Fit the map's feature prior on the embeddings of defect-free ``images`` (in [0, 1], any count).

        Raises:
            RuntimeError: If the map has no feature prior.

        """
        anomaly_map = self.anomaly_map
        if anomaly_map.feature_prior is None:
            msg = "This model's anomaly map has no feature prior to fit (anomaly_map 'mask+feature_prior' has one)."
            raise RuntimeError(msg)
        tiles = self.tile(images)
        embed = anomaly_map.feature_distance.embed
        embeddings = torch.cat([embed(batch, 2 * self.image_size) for batch in tiles.split(32)])
        anomaly_map.feature_prior.fit(embeddings)

    @property
    def unprepared_parts(self) -> set[str]:
        """The added parts not ready to score: uncalibrated, or the feature prior unfitted."""
        unready = {name for name, scale in self.anomaly_map.scales().items() if torch.isnan(scale)}
        prior = self.anomaly_map.feature_prior
        if prior is not None and not prior.fitted:
            unready.add("feature_prior")  # its scale, if any, belongs to the weights it is about to replace
        return unready

    def prepare_feature_parts(self, images: torch.Tensor) -> bool:
        """Fit the feature prior if unfitted and calibrate the unprepared added parts, on defect-free ``images``.

        Parts calibrated already keep their scales: the map they give, and its thresholds, stay as fitted.

        Args:
            images (torch.Tensor): Good images in [0, 1] (the feature prior and the coarse residual's
                normal level are fitted on all, the scales calibrated on the first 32).

        Returns:
            bool: Whether a part the map weighs was prepared now (thresholds learned before then
            predate it); False when every weighed part was ready.

        """
        unready = self.unprepared_parts
        if not unready:
            return False
        prior = self.anomaly_map.feature_prior
        if prior is not None and not prior.fitted:
            self.fit_feature_prior(images)
        self.calibrate_feature_scale(images, unready)
        return bool(unready & self.anomaly_map.weighted_parts())

    @torch.no_grad()
    def calibrate_feature_scale(self, images: torch.Tensor, names: Iterable[str] | None = None) -> dict[str, float]:
        """Match the added parts' scales to the mask map's on defect-free ``images`` (in [0, 1]).

        Both maps come from the encoder's start with the closed-form mask (milliseconds per image):
        for R-RGI's maps this scale measured as well as one from R-RGI itself. The coarse residual's
        normal level is learned on all the images (:meth:`~.anomaly_map.AnomalyMap.calibrate`).

        Args:
            images (torch.Tensor): Good images in [0, 1] (at least 2).
            names (Iterable[str] | None): The parts to calibrate (None: every built one).

        Returns:
            dict[str, float]: The new scale of each calibrated part.

        Raises:
            RuntimeError: If the map has no added part.

        """
        if not self.anomaly_map.scales():
            msg = "This model's anomaly map has no part beside the mask to calibrate (anomaly_map is 'mask')."
            raise RuntimeError(msg)
        results = [
            self.invert(chunk, steps=0, mask_solver="closed_form", finetune_steps=0) for chunk in images.split(64)
        ]
        merged = InversionResult(
            **{field.name: torch.cat([getattr(r, field.name) for r in results]) for field in fields(InversionResult)}
        )
        return self.anomaly_map.calibrate(merged, names)

    def predictions(self, result: InversionResult) -> InferenceBatch:
        """Anomalib's predictions from an inversion: ``anomaly_map`` (stitched) and ``pred_score``.

        ``pred_score`` is the maximum of the image-score map (:meth:`~.anomaly_map.AnomalyMap.maps`).
        """
        with _float32(result.target):
            anomaly_map, score_map = (self.untile(part) for part in self.anomaly_map.maps(result))
        return InferenceBatch(pred_score=image_score(score_map), anomaly_map=anomaly_map)

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        """Score a batch of images in [0, 1]."""
        return self.predictions(self.invert(images))
