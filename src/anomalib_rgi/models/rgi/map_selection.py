"""Learn the anomaly map's settings on a fit's validation images: the mask floor, the weights, the thresholds.

A fit keeps the parts of every validation map (:meth:`~.anomaly_map.AnomalyMap.parts`), so weighing
them again at other settings costs no second inversion. The functions here score, choose and learn
from those kept parts; the validation Dice they compute is the one that also chooses the epoch.

Two choices are made among the candidate weights. The pixel map: among the maps whose pixel AUROC is
within :data:`PIXEL_AUROC_TOLERANCE` of the best one's (so that a map that outlines the defects it
finds a little better cannot win while it misses others altogether) and whose dataset-level Dice is
within :data:`DICE_TOLERANCE` of the best of those, the one that adds the least weight to the mask.
Differences inside those tolerances follow which defects the validation half happens to hold;
weight added for them tunes the map to those kinds, and defects of a kind validation lacks lose it.
The image score: the map whose maximum has the highest image AUROC.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import SimpleNamespace

import torch
from anomalib.post_processing import PostProcessor
from lightning.pytorch import LightningModule, Trainer
from torchmetrics.functional.classification import binary_auroc

from anomalib_rgi.metrics import ranking_quality

from .anomaly_map import (
    ADDED_PARTS,
    FLOOR_OF,
    FLOORS,
    MapSettings,
    describe_map,
    image_score,
    scored_as,
    weigh,
    weigh_maps,
)

PIXEL_AUROC_TOLERANCE = 0.01
DICE_TOLERANCE = 0.01

# One validation batch: the map's parts, the ground-truth masks and labels (either may be None).
KeptBatch = tuple[dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor | None]


def has_defect_masks(kept: list[KeptBatch]) -> bool:
    """Whether the kept validation images include defects with masks (Dice needs them)."""
    return all(gt_mask is not None for _, gt_mask, _ in kept) and any(gt_mask.any() for _, gt_mask, _ in kept)


def good_level(kept: list[KeptBatch], quantile: float, part: str = "mask") -> float:
    """Return the ``quantile`` of a part (the mask by default) over the pixels of the kept defect-free images.

    Raises:
        ValueError: If no kept image is labelled defect-free.

    """
    good = [parts[part][gt_label.cpu() == 0] for parts, _, gt_label in kept if gt_label is not None]
    values = torch.cat([part.flatten() for part in good]) if good else torch.empty(0)
    if not values.numel():
        msg = (
            "mask_floor_quantile learns the mask floor on the defect-free validation images, but the validation "
            "set has none: give the datamodule good validation images, or set mask_floor_quantile to 0."
        )
        raise ValueError(msg)
    return float(values.kthvalue(max(1, math.ceil(quantile * values.numel()))).values)


def weighed_batch(
    parts: dict[str, torch.Tensor],
    settings: MapSettings,
    device: torch.device,
    gt_mask: torch.Tensor | None = None,
    gt_label: torch.Tensor | None = None,
) -> SimpleNamespace:
    """Anomalib's batch fields for kept parts at these settings: maps ``(N, H, W)``, scores and ground truth."""
    anomaly_map, score_map = weigh_maps({name: part.to(device) for name, part in parts.items()}, settings)
    return SimpleNamespace(
        anomaly_map=anomaly_map.squeeze(1), pred_score=image_score(score_map), gt_mask=gt_mask, gt_label=gt_label
    )


def validation_pixel_quality(kept: list[KeptBatch], settings: MapSettings) -> tuple[float, float]:
    """Pixel AUROC and dataset-level Dice at the best threshold (``val_pixel_F1Max``) of these settings' map."""
    maps = torch.cat([weigh(parts, settings).flatten() for parts, _, _ in kept])
    truth = torch.cat([gt_mask.cpu().flatten() for _, gt_mask, _ in kept])
    return ranking_quality(maps, truth)


def validation_image_auroc(kept: list[KeptBatch], settings: MapSettings) -> float | None:
    """Image AUROC of these settings' map maximum as the score; None without both good and defective images."""
    if any(gt_label is None for _, _, gt_label in kept):
        return None
    scores = torch.cat([image_score(weigh(parts, settings)) for parts, _, _ in kept])
    labels = torch.cat([gt_label.cpu() for _, _, gt_label in kept]).long()
    if labels.unique().numel() < 2:
        return None
    return float(binary_auroc(scores, labels))


def lightest_near_best(pixel_auroc: list[float], dice: list[float], added: list[float]) -> int:
    """Return the index of the pixel map to keep among candidates scored on validation.

    Of the candidates whose pixel AUROC is within :data:`PIXEL_AUROC_TOLERANCE` of the best and whose
    Dice is within :data:`DICE_TOLERANCE` of the best of those, the one with the least ``added``
    weight, then the better Dice; remaining ties go to the first.

    Args:
        pixel_auroc (list[float]): Each candidate's validation pixel AUROC.
        dice (list[float]): Each candidate's validation Dice at the best threshold.
        added (list[float]): Each candidate's total weight added to the mask.

    """
    ranks_near_best = [i for i, value in enumerate(pixel_auroc) if value >= max(pixel_auroc) - PIXEL_AUROC_TOLERANCE]
    best_dice = max(dice[i] for i in ranks_near_best)
    eligible = [i for i in ranks_near_best if dice[i] >= best_dice - DICE_TOLERANCE]
    return min(eligible, key=lambda i: (added[i], -dice[i]))


def choose_settings(
    kept: list[KeptBatch],
    current: MapSettings,
    candidates: list[MapSettings],
    mask_floor_quantile: float,
) -> tuple[MapSettings, float | None, dict[str, dict[str, float]]]:
    """Learn the floors, then choose the pixel map's and the image score's weights among the candidates.

    The pixel map: :func:`lightest_near_best`. The image score: the best image AUROC (ties: the first
    candidate).

    Args:
        kept (list[KeptBatch]): The validation's kept parts.
        current (MapSettings): The settings the model scores with now.
        candidates (list[MapSettings]): Weights to choose among (empty: keep the current ones).
        mask_floor_quantile (float): Above 0: the mask floor is this quantile of the mask on good images,
            and the coarse floor the same quantile of the coarse residual, where it is kept.

    Returns:
        tuple: The chosen settings, the pixel map's validation Dice (None without defect masks) and,
        by the map each candidate names, its ``Dice``, ``pixel_AUROC`` and ``image_AUROC`` (empty when
        there was nothing to choose).

    Raises:
        ValueError: If candidates are given but the validation images have no defect masks.

    """
    masked = has_defect_masks(kept)
    if candidates and not masked:
        msg = (
            "The anomaly map is chosen on validation (a list of feature_weight candidates or "
            "'best_on_validation'), but the validation images have no defect masks: give the datamodule "
            "defective validation images with masks (val_split_mode 'from_test'), or fix the map and its weight."
        )
        raise ValueError(msg)
    settings = dict(current)
    if mask_floor_quantile:
        settings["mask_floor"] = good_level(kept, mask_floor_quantile)
        for part, floor in FLOOR_OF.items():
            if all(part in parts for parts, _, _ in kept):
                settings[floor] = good_level(kept, mask_floor_quantile, part)
    if not masked:
        return settings, None, {}
    if not candidates:
        return settings, validation_pixel_quality(kept, settings)[1], {}
    options = [scored_as(settings | weights, weights) for weights in candidates]
    pixel_auroc, dice = zip(*(validation_pixel_quality(kept, option) for option in options), strict=True)
    image_auroc = [validation_image_auroc(kept, option) for option in options]
    added = [sum(weights.get(part, 0.0) for part in ADDED_PARTS) for weights in candidates]
    best = lightest_near_best(pixel_auroc, dice, added)
    chosen = options[best]
    if image_auroc[0] is not None:
        chosen = scored_as(chosen, options[max(range(len(options)), key=image_auroc.__getitem__)])
    report = {
        describe_map(option | dict.fromkeys(FLOORS, 0.0)): {
            "Dice": dice[i],
            "pixel_AUROC": pixel_auroc[i],
            "image_AUROC": float("nan") if image_auroc[i] is None else image_auroc[i],
        }
        for i, option in enumerate(options)
    }
    return chosen, dice[best], report


def learn_thresholds(
    post_processor: PostProcessor, trainer: Trainer, module: LightningModule, batches: Iterable[object]
) -> None:
    """Learn the post-processor's thresholds and normalisation anew, as a validation would, from these batches.

    Args:
        post_processor (PostProcessor): Anomalib's post-processor of ``module``.
        trainer (Trainer): The running trainer.
        module (LightningModule): The model.
        batches (Iterable[object]): Scored validation batches (``anomaly_map``, ``pred_score``,
            ``gt_mask``, ``gt_label``).

    """
    for batch in batches:
        post_processor.on_validation_batch_end(trainer, module, batch)
    post_processor.on_validation_epoch_end(trainer, module)
