"""Learn the anomaly map's settings on a fit's validation images: the mask floor, the weights, the thresholds.

A fit keeps the parts of every validation map (:meth:`~.anomaly_map.AnomalyMap.parts`), so weighing
them again at other settings costs no second inversion. The functions here score, choose and learn
from those kept parts; the validation Dice they compute is the one that also chooses the epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import SimpleNamespace

import torch
from anomalib.metrics import F1Max
from anomalib.post_processing import PostProcessor
from lightning.pytorch import LightningModule, Trainer

from .anomaly_map import MapSettings, describe_map, image_score, weigh

# One validation batch: the map's parts, the ground-truth masks and labels (either may be None).
KeptBatch = tuple[dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor | None]


def has_defect_masks(kept: list[KeptBatch]) -> bool:
    """Whether the kept validation images include defects with masks (Dice needs them)."""
    return all(gt_mask is not None for _, gt_mask, _ in kept) and any(gt_mask.any() for _, gt_mask, _ in kept)


def good_mask_level(kept: list[KeptBatch], quantile: float) -> float:
    """Return the ``quantile`` of the mask part over the pixels of the kept defect-free images.

    Raises:
        ValueError: If no kept image is labelled defect-free.

    """
    good = [parts["mask"][gt_label.cpu() == 0] for parts, _, gt_label in kept if gt_label is not None]
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
    anomaly_map = weigh({name: part.to(device) for name, part in parts.items()}, settings).squeeze(1)
    return SimpleNamespace(
        anomaly_map=anomaly_map, pred_score=image_score(anomaly_map), gt_mask=gt_mask, gt_label=gt_label
    )


def validation_dice(kept: list[KeptBatch], settings: MapSettings) -> float:
    """Dataset-level Dice at the best threshold (``val_pixel_F1Max``) of the map these settings give."""
    dice = F1Max(fields=["anomaly_map", "gt_mask"])
    for parts, gt_mask, _ in kept:
        dice.update(weighed_batch(parts, settings, torch.device("cpu"), gt_mask.cpu()))
    return float(dice.compute())


def choose_settings(
    kept: list[KeptBatch],
    current: MapSettings,
    candidates: list[MapSettings],
    mask_floor_quantile: float,
) -> tuple[MapSettings, float | None, dict[str, float]]:
    """Learn the floor, then keep the candidate weights with the best validation Dice (the first on a tie).

    Args:
        kept (list[KeptBatch]): The validation's kept parts.
        current (MapSettings): The settings the model scores with now.
        candidates (list[MapSettings]): Weights to choose among (empty: keep the current ones).
        mask_floor_quantile (float): Above 0: the floor is this quantile of the mask on good images.

    Returns:
        tuple: The chosen settings, their validation Dice (None without defect masks) and the Dice of
        every option, by the map each names.

    Raises:
        ValueError: If candidates are given but the validation images have no defect masks.

    """
    masked = has_defect_masks(kept)
    if candidates and not masked:
        msg = (
            "The anomaly map is chosen by validation Dice (a list of feature_weight candidates or "
            "'best_on_validation'), but the validation images have no defect masks: give the datamodule "
            "defective validation images with masks (val_split_mode 'from_test'), or fix the map and its weight."
        )
        raise ValueError(msg)
    settings = dict(current)
    if mask_floor_quantile:
        settings["mask_floor"] = good_mask_level(kept, mask_floor_quantile)
    options = [settings | weights for weights in candidates] or [settings]
    if not masked:
        return options[0], None, {}
    dice = [validation_dice(kept, option) for option in options]
    best = max(range(len(options)), key=dice.__getitem__)
    return (
        options[best],
        dice[best],
        {describe_map(option | {"mask_floor": 0.0}): value for option, value in zip(options, dice, strict=True)},
    )


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
