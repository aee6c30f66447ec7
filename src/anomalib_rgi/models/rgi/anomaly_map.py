"""The pixel anomaly map: RGI's mask, optionally above a floor, plus weighted parts beside it.

The paper's map is the mask alone, ``mean_c |M|`` (smoothed here by a Gaussian of ``sigma`` pixels).
Three parts can be added to it:

- ``"mask+coarse_residual"``: plus the input's residual from the prior's image at the inversion's
  starting latent, averaged over windows a quarter of the image wide (:class:`CoarseResidual`). The
  GAN prior alone, no ImageNet features: it catches faint, spread-out defects (translucent stains,
  discolouration, shading) whose pixels each stay below the mask's threshold ``lam / 2``.
- ``"mask+feature_distance"``: plus the distance between the ImageNet features of the input and of
  the prior's image at the inversion's starting latent (not the final restoration: the steps, and
  R-RGI's fine-tuning above all, learn part of a defect);
- ``"mask+feature_prior"``: plus the residual of a generative prior of normal ImageNet features;
- ``"best_on_validation"``: each validation of the fit chooses among the mask alone or with the
  coarse residual, each beside the feature prior or not, at every candidate weight: the pixel
  map that adds the least weight to the mask among those within 0.01 of the best validation pixel
  AUROC and within 0.01 of the best Dice of those, and, on its own, the map whose maximum scores
  images best (validation image AUROC). The two kinds of
  part see different defects: the coarse residual faint, spread-out changes of a part the prior
  models, the feature prior foreign material and textures it does not.

The ImageNet-feature parts are in :mod:`~anomalib_rgi.models.rgi.feature_parts`.

The image score is a map's maximum. It may come from another weighing of the same parts than the
pixel map: a part that ranks images well (the feature prior finds faint, spread-out defects) can be
too coarse to outline them, where the mask outlines them sharply.

Each added part is brought to the mask map's units by a scale calibrated on defect-free images, so
one weight means the same on every prior. The mask may count only above a floor learned on the good
validation images: where an added part carries the defects, the mask's level on normal texture is noise.
The coarse residual has its own floor, learned with the mask's (the same quantile of the part on the
good validation images): at the heavy weights faint, spread-out defects need, its level on normal
texture would otherwise cover the mask's thin outline of cracks and particles.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import fields
from typing import Literal, get_args

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .feature_parts import FeatureDistance, FeaturePrior
from .inversion import InversionResult, is_tracing

MapKind = Literal["mask", "mask+coarse_residual", "mask+feature_distance", "mask+feature_prior", "best_on_validation"]
MAP_KINDS: tuple[str, ...] = get_args(MapKind)
FEATURE_PARTS = ("feature_distance", "feature_prior")  # read ImageNet features
ADDED_PARTS = ("coarse_residual", *FEATURE_PARTS)  # every part a map may add to the mask; ties: the first
SCORE_OF = {part: f"score_{part}" for part in ADDED_PARTS}  # the image score's weight of each part
SCORE_PARTS = tuple(SCORE_OF.values())
FLOOR_OF = {"coarse_residual": "coarse_floor"}  # the added parts that count only above a floor of their own
FLOORS = ("mask_floor", *FLOOR_OF.values())  # learned on the good validation images, not chosen
SETTING_NAMES = (*ADDED_PARTS, *FLOORS, *SCORE_PARTS)
SCALE_IMAGES = 32  # good images a part's scale is calibrated on (percentiles of about half a million pixels)
# {"feature_distance": weight, ..., "mask_floor": level, "coarse_floor": level, "score_feature_distance": ...}
MapSettings = dict[str, float]


def score_settings(settings: MapSettings) -> MapSettings:
    """Return the settings of the map whose maximum is the image score (the pixel map's where not given)."""
    weights = {part: settings.get(score, settings.get(part, 0.0)) for part, score in SCORE_OF.items()}
    return weights | {floor: settings.get(floor, 0.0) for floor in FLOORS}


def scored_as(settings: MapSettings, weights: MapSettings) -> MapSettings:
    """Return ``settings`` whose image score weighs the added parts as ``weights`` does."""
    return settings | {score: weights.get(part, 0.0) for part, score in SCORE_OF.items()}


def map_kind(settings: MapSettings) -> str:
    """Name the map that ``settings`` give (``"mask"`` when no added part has a weight)."""
    weighted = [part for part in ADDED_PARTS if settings.get(part)]
    return "+".join(["mask", *weighted])


def describe_map(settings: MapSettings) -> str:
    """Name the anomaly map that ``settings`` give, as results tables show it.

    ``"mask"`` is the paper's map; otherwise the weighted added part and the mask floor follow.
    """
    pixel = _describe_weights(settings)
    scoring = score_settings(settings)
    if all(scoring[part] == settings.get(part, 0.0) for part in ADDED_PARTS):
        return pixel
    return f"{pixel}; image score: {_describe_weights(scoring)}"


def _describe_weights(settings: MapSettings) -> str:
    weighted = [_describe_part(part, settings) for part in ADDED_PARTS if settings.get(part)]
    if not weighted:
        return "mask"
    floor = settings.get("mask_floor", 0.0)
    return " + ".join(["mask", *weighted]) + (f", mask above {floor:.3g}" if floor else "")


def _describe_part(part: str, settings: MapSettings) -> str:
    level = _floor(part, settings)
    return f"{part.replace('_', ' ')} x{settings[part]:g}" + (f" above {level:.3g}" if level else "")


def _floor(part: str, settings: MapSettings) -> float:
    """Return the level below which an added part counts nothing (0: it has no floor, or none was learned)."""
    return settings.get(FLOOR_OF[part], 0.0) if part in FLOOR_OF else 0.0


def image_score(anomaly_map: torch.Tensor) -> torch.Tensor:
    """Return each image's anomaly score: the maximum of its map, ``(N,)``."""
    return anomaly_map.flatten(1).amax(dim=1)


def weigh_maps(parts: dict[str, torch.Tensor], settings: MapSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the anomaly map and the map whose maximum is the image score, at these settings (:func:`weigh`)."""
    return weigh(parts, settings), weigh(parts, score_settings(settings))


def weigh(parts: dict[str, torch.Tensor], settings: MapSettings) -> torch.Tensor:
    """Return the anomaly map of :meth:`AnomalyMap.parts`' parts at these settings.

    ``max(mask - mask_floor, 0) + sum(weight * part)``, the coarse residual taken as
    ``max(part - coarse_floor, 0)``; parts at weight 0 may be absent from ``parts``. The mask floor applies
    only beside an added part: alone, the mask's every level is the map's ordering.
    """
    floor = settings.get("mask_floor", 0.0) if any(settings.get(part) for part in ADDED_PARTS) else 0.0
    anomaly_map = (parts["mask"] - floor).clamp(min=0) if floor else parts["mask"]
    for name in ADDED_PARTS:
        if weight := settings.get(name, 0.0):
            part = (parts[name] - level).clamp(min=0) if (level := _floor(name, settings)) else parts[name]
            anomaly_map = anomaly_map + weight * part
    return anomaly_map


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """Return a normalised one-dimensional Gaussian of anomalib's length (``compute_kernel_size``: about 8 sigma)."""
    size = 2 * int(4.0 * sigma + 0.5) + 1
    offsets = torch.arange(size, dtype=torch.float32) - size // 2
    kernel = torch.exp(-offsets.square() / (2 * sigma**2))
    return kernel / kernel.sum()


class SeparableGaussianBlur(nn.Module):
    """anomalib's ``GaussianBlur2d`` (the same kernel, borders reflected) as two one-dimensional passes.

    The map's blur runs in every exported graph; at sigma 4 anomalib's kernel is 33 x 33, 1089
    multiply-adds per pixel where the two passes take 66.

    Args:
        sigma (float): Standard deviation in pixels.

    """

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.register_buffer("kernel", gaussian_kernel(sigma), persistent=False)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """Blur one-channel maps ``(N, 1, H, W)``; H and W must exceed half the kernel."""
        pad = len(self.kernel) // 2
        rows = F.conv2d(F.pad(maps, (pad, pad, 0, 0), mode="reflect"), self.kernel.view(1, 1, 1, -1))
        return F.conv2d(F.pad(rows, (0, 0, pad, pad), mode="reflect"), self.kernel.view(1, 1, -1, 1))


def window_mean(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Each pixel's Gaussian-weighted mean over its neighbourhood inside the image, per channel.

    A round window: a square one draws box-shaped blobs, and on a periodic texture whose period does
    not divide its side it leaves stripes of the pattern. At the border the weights outside the image
    are dropped and the rest renormalised, so the border is neither darkened (zero padding) nor mirrored.

    Args:
        images (torch.Tensor): ``(N, C, H, W)``.
        kernel (torch.Tensor): The one-dimensional window (:func:`gaussian_kernel`), applied along rows
            then columns.

    """
    pad = len(kernel) // 2

    def passes(values: torch.Tensor) -> torch.Tensor:
        channels = values.shape[1]
        across = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
        rows = F.conv2d(values, across, padding=(0, pad), groups=channels)
        return F.conv2d(rows, across.transpose(2, 3), padding=(pad, 0), groups=channels)

    return passes(images) / passes(torch.ones_like(images[:1, :1]))


class CoarseResidual(nn.Module):
    """Where the input departs from the prior's image at the starting latent, averaged over wide windows.

    ``mean_c |window mean of (x - G(z_0)) - centre_c| / spread_c``: a faint stain, tint or shading
    change is a residual of one sign spread over many pixels, which the window mean adds up, while
    normal texture's residual changes sign from grain to grain and averages away. Each channel is
    averaged on its own, so a hue shift whose channels move in opposite directions still counts. The
    start ``G(z_0)`` (the encoder's reading of the input) rather than the restoration: the inversion's
    steps, and R-RGI's fine-tuning above all, learn a smooth defect into ``G(z)``. The window is a
    Gaussian (:func:`window_mean`) whose standard deviation is a quarter of ``window``.

    The centre and spread are the window mean's mean and standard deviation on good images, per
    channel and position (:meth:`fit_normal`). A prior whose start is off in colour everywhere (on a
    colour fabric, by up to a tenth of the range in one channel) otherwise ranks a defect that moves a
    channel the other way BELOW normal texture; centred, the part measures the departure from the
    prior's usual error. Per position, because that error is not the same everywhere: the generator's
    padding reproduces the border worse, and a window the border clips averages fewer pixels, so
    centred per channel alone the part drew bands along the border of good images. Until fitted, the
    centre is 0 and the spread 1.

    Args:
        window (int): Width of the averaging window in pixels (four standard deviations of the Gaussian).
        channels (int): Channels of the images.
        size (int): Side of the images, in pixels.

    """

    def __init__(self, window: int, channels: int = 3, size: int = 128) -> None:
        super().__init__()
        self.window = window
        self.register_buffer("kernel", gaussian_kernel(window / 4), persistent=False)
        self.register_buffer("centre", torch.zeros(1, channels, size, size))
        self.register_buffer("spread", torch.ones(1, channels, size, size))
        # Mask-map units per unit of residual (``AnomalyMap.calibrate``); NaN until calibrated.
        self.register_buffer("scale", torch.tensor(float("nan")))

    def window_mean(self, images: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """Return the window mean of ``images - start`` (both in [-1, 1]), per channel, ``(N, C, H, W)``."""
        return window_mean(images - start.clamp(-1, 1), self.kernel)

    @torch.no_grad()
    def fit_normal(self, images: torch.Tensor, start: torch.Tensor) -> None:
        """Set the centre and spread per channel and position from good ``images`` and their starts (both in [-1, 1]).

        Raises:
            ValueError: With fewer than two images, or images of another size than the part was built for.

        """
        if len(images) < 2 or images.shape[1:] != self.centre.shape[1:]:
            msg = (
                f"The coarse residual learns its normal level from at least 2 good images of shape "
                f"{tuple(self.centre.shape[1:])}, got {tuple(images.shape)}."
            )
            raise ValueError(msg)
        averaged = self.window_mean(images, start)
        self.centre.copy_(averaged.mean(dim=0, keepdim=True))
        self.spread.copy_(averaged.std(dim=0, keepdim=True).clamp_min(1e-6))

    def forward(self, images: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """Return the coarse residual of ``images`` from ``start`` (both in [-1, 1]), ``(N, 1, H, W)``."""
        return ((self.window_mean(images, start) - self.centre) / self.spread).abs().mean(dim=1, keepdim=True)


def _weight_options(kind: MapKind, weights: list[float]) -> list[dict[str, float]]:
    """Return the added parts' weights a map of ``kind`` may take; validation chooses when there are several.

    ``best_on_validation`` offers the mask with or without the coarse residual (each weight), each beside
    no feature prior or the feature prior (each weight). The feature distance is not a candidate: chosen
    on a validation half without smears, it missed them where the feature prior found them, and it needs
    a second pass of the ImageNet network (docs/method.md).
    """
    if kind == "best_on_validation":
        features = [0.0, *weights]
        return [
            {"coarse_residual": coarse, "feature_distance": 0.0, "feature_prior": prior}
            for prior in features
            for coarse in features
        ]
    if kind == "mask":
        return [dict.fromkeys(ADDED_PARTS, 0.0)]
    return [{part: weight if kind == f"mask+{part}" else 0.0 for part in ADDED_PARTS} for weight in weights]


class AnomalyMap(nn.Module):
    """Compute the pixel anomaly map of an inversion, and prepare the parts added to the mask.

    Args:
        kind (MapKind): Which map (see the module docstring).
        feature_weight (float | list[float]): Weight of the added part (coarse residual or ImageNet
            feature part) in the mask map's units; a list gives the candidates validation chooses from.
            Unused by ``"mask"``.
        sigma (float): Gaussian smoothing of the mask and the feature parts in pixels (0: none).
        image_size (int): Side of the prior's images (the feature prior reads them at twice this; the
            coarse residual's window is a quarter of it).
        image_channels (int): Channels of the images (the feature parts read 1 or 3).
        learn_floor (bool): The mask floor, and the coarse residual's, are learned on validation (until
            then the mask's is NaN and scoring refuses); otherwise both are 0. Ignored by ``"mask"``: the
            floors apply only beside an added part.

    Raises:
        ValueError: On an unknown kind, a negative or empty weight, or images the feature parts cannot read.

    """

    def __init__(
        self,
        kind: MapKind = "mask",
        feature_weight: float | list[float] = 0.5,
        sigma: float = 4.0,
        image_size: int = 128,
        image_channels: int = 3,
        learn_floor: bool = False,
    ) -> None:
        super().__init__()
        if kind not in MAP_KINDS:
            msg = f"anomaly_map must be one of {MAP_KINDS}, got {kind!r}."
            raise ValueError(msg)
        weights = list(feature_weight) if isinstance(feature_weight, list | tuple) else [feature_weight]
        if not weights or not all(isinstance(weight, int | float) and weight > 0 for weight in weights):
            msg = (
                "feature_weight must be a positive number, or a non-empty list of them (candidates chosen on "
                f"validation), got {feature_weight!r}."
            )
            raise ValueError(msg)
        options = _weight_options(kind, weights)
        uses = {part: any(option[part] for option in options) for part in ADDED_PARTS}  # the parts to build
        if any(uses[part] for part in FEATURE_PARTS) and image_channels not in {1, 3}:
            msg = f"The ImageNet-feature parts read grey or RGB images, not {image_channels} channels: use map 'mask'."
            raise ValueError(msg)
        self.kind = kind
        self.learn_floor = learn_floor and kind != "mask"  # the floor matters only beside an added part
        self.image_size = image_size
        self.blur = SeparableGaussianBlur(sigma) if sigma > 0 else None
        coarse = uses["coarse_residual"]
        self.coarse_residual = CoarseResidual(image_size // 4, image_channels, image_size) if coarse else None
        # The feature prior reads the feature distance's embedding.
        self.feature_distance = FeatureDistance() if any(uses[part] for part in FEATURE_PARTS) else None
        self.feature_prior = None
        if uses["feature_prior"]:
            channels = sum(self.feature_distance.features.feature_info.channels())
            self.feature_prior = FeaturePrior(channels, grid=2 * image_size // 8)  # embed's grid at 2 x image_size
        self.candidates = options if len(options) > 1 else []  # empty: the map is fixed
        start = options[0]
        floor = float("nan") if self.learn_floor else 0.0
        self.settings: MapSettings = scored_as({**start, **dict.fromkeys(FLOORS, 0.0), "mask_floor": floor}, start)
        # The settings in the checkpoint: the chosen weights and learned floor travel with the weights.
        self.register_buffer("saved_settings", self._settings_tensor())
        self.register_load_state_dict_post_hook(_read_saved_settings)

    def _settings_tensor(self) -> torch.Tensor:
        # The last entry marks a floor this model learned: a floor of 0 from a fit without one is not learned.
        learned = self.learn_floor and not math.isnan(self.settings["mask_floor"])
        values = [self.settings[name] for name in SETTING_NAMES]
        return torch.tensor([*values, float(learned)], dtype=torch.float64)

    def set_settings(self, settings: MapSettings) -> None:
        """Score with these weights and floors from now on (and save them with the model).

        Without ``score_*`` weights the image score is the pixel map's maximum; without a
        ``coarse_floor`` the coarse residual counts from 0.
        """
        settings = dict.fromkeys(FLOOR_OF.values(), 0.0) | scored_as(settings, score_settings(settings))
        self.settings = {name: float(settings[name]) for name in SETTING_NAMES}
        self.saved_settings.copy_(self._settings_tensor())

    @property
    def learns_settings(self) -> bool:
        """Whether a fit's validation chooses a weight or learns the floor."""
        return bool(self.candidates) or self.learn_floor

    def _smooth(self, part: torch.Tensor) -> torch.Tensor:
        return self.blur(part) if self.blur is not None else part

    def mask_part(self, result: InversionResult) -> torch.Tensor:
        """Return the paper's map: ``mean_c |M|``, smoothed, ``(N, 1, H, W)``."""
        return self._smooth(result.mask.abs().mean(dim=1, keepdim=True))

    def _distance_part(self, result: InversionResult) -> torch.Tensor:
        return self._smooth(self.feature_distance((result.target + 1) / 2, (result.start.clamp(-1, 1) + 1) / 2))

    def _prior_part(self, result: InversionResult) -> torch.Tensor:
        if not is_tracing() and not self.feature_prior.fitted:
            msg = (
                "The feature prior was never fitted (this prior was trained without it). Fit with anomaly_map "
                "'mask+feature_prior' or 'best_on_validation', or call fit_feature_prior(good_images) before scoring."
            )
            raise RuntimeError(msg)
        images = (result.target + 1) / 2
        residual = self.feature_prior.residual(self.feature_distance.embed(images, 2 * self.image_size))
        return self._smooth(F.interpolate(residual, size=images.shape[-2:], mode="bilinear", align_corners=False))

    def _coarse_part(self, result: InversionResult) -> torch.Tensor:
        return self.coarse_residual(result.target, result.start)

    def _added_parts(self) -> dict[str, tuple[Callable[[InversionResult], torch.Tensor], torch.Tensor]]:
        """Each built added part: how it is computed and its scale buffer."""
        parts = {}
        if self.coarse_residual is not None:
            parts["coarse_residual"] = (self._coarse_part, self.coarse_residual.scale)
        if self.feature_distance is not None:
            parts["feature_distance"] = (self._distance_part, self.feature_distance.scale)
        if self.feature_prior is not None:
            parts["feature_prior"] = (self._prior_part, self.feature_prior.scale)
        return parts

    def scales(self) -> dict[str, torch.Tensor]:
        """Each built added part's scale buffer (mask-map units per unit of the part)."""
        return {name: scale for name, (_, scale) in self._added_parts().items()}

    def parts(self, result: InversionResult, weighted_only: bool = False) -> dict[str, torch.Tensor]:
        """Return the parts of the map, each ``(N, 1, H, W)``, the added parts in the mask map's units.

        Args:
            result (InversionResult): An inversion.
            weighted_only (bool): Leave out the added parts that neither the pixel map nor the image
                score weighs.

        Raises:
            RuntimeError: If an added part was never calibrated or the feature prior never fitted.

        """
        parts = {"mask": self.mask_part(result)}
        weighted = self.weighted_parts()
        for name, (compute, scale) in self._added_parts().items():
            if weighted_only and name not in weighted:
                continue
            part = compute(result)  # first: an unfitted feature prior says so
            if not is_tracing() and torch.isnan(scale):
                msg = (
                    f"The {name} part's scale was never calibrated (this prior was trained without it). Fit with "
                    "this anomaly_map, or call calibrate_feature_scale(good_images) before scoring."
                )
                raise RuntimeError(msg)
            parts[name] = scale * part
        return parts

    def forward(self, result: InversionResult) -> torch.Tensor:
        """Return the anomaly map at the current settings, ``(N, 1, H, W)``; no per-image normalisation.

        Raises:
            RuntimeError: If the mask floor is to be learned and was not (the prior was fitted without it).

        """
        return self.maps(result)[0]

    def maps(self, result: InversionResult) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the anomaly map and the map whose maximum is the image score, each ``(N, 1, H, W)``.

        Raises:
            RuntimeError: If the mask floor is to be learned and was not (the prior was fitted without it).

        """
        if not is_tracing() and self.weighted_parts() and math.isnan(self.settings["mask_floor"]):
            msg = (
                "This model learns its mask floor on validation (mask_floor_quantile > 0), and the prior it holds "
                "was fitted without one: fit it again, or score it with mask_floor_quantile 0."
            )
            raise RuntimeError(msg)
        return weigh_maps(self.parts(result, weighted_only=True), self.settings)

    def weighted_parts(self) -> set[str]:
        """Return the added parts the pixel map or the image score weighs at the current settings."""
        scoring = score_settings(self.settings)
        return {part for part in ADDED_PARTS if self.settings[part] or scoring[part]}

    @torch.no_grad()
    def calibrate(self, result: InversionResult, names: Iterable[str] | None = None) -> dict[str, float]:
        """Match the added parts' scales to the mask map's on an inversion of defect-free images.

        A scale is the ratio of the two maps' 99th percentiles over the first :data:`SCALE_IMAGES`
        images. The coarse residual first learns its centre and spread per position on all of them
        (:meth:`CoarseResidual.fit_normal`): a level per position needs more images than a percentile.

        Args:
            result (InversionResult): An inversion of defect-free images.
            names (Iterable[str] | None): The parts to calibrate (None: every built one).

        Returns:
            dict[str, float]: The new scale of each calibrated part.

        """
        chosen = set(self.scales()) if names is None else set(names)
        if "coarse_residual" in chosen and self.coarse_residual is not None:
            self.coarse_residual.fit_normal(result.target, result.start)
        sample = InversionResult(**{field.name: getattr(result, field.name)[:SCALE_IMAGES] for field in fields(result)})
        mask_quantile = self.mask_part(sample).flatten().quantile(0.99)
        scales = {}
        for name, (compute, scale) in self._added_parts().items():
            if name in chosen:
                scale.copy_(mask_quantile / compute(sample).flatten().quantile(0.99).clamp_min(1e-6))
                scales[name] = float(scale)
        return scales


def _read_saved_settings(module: AnomalyMap, incompatible_keys: object) -> None:
    del incompatible_keys
    module.settings = dict(zip(SETTING_NAMES, module.saved_settings.tolist()[:-1], strict=True))
