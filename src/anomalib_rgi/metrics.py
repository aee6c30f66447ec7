"""Dice for anomalib: the dataset-level score a factory sees, and the paper's per-image oracle.

``Dice`` pools true/false positives over ALL pixels of all images at the model's threshold (the
``pred_mask`` the post-processor produced): one threshold for the whole line. For binary masks this
equals anomalib's pixel F1 score; it is reported under its segmentation name.

``PerImageBestDice`` is the protocol of the RGI paper: every anomaly map is min-max normalised on
its own, the best of 101 thresholds in [0, 1] is chosen FOR EACH IMAGE (an oracle a deployed system
does not have), and the best Dice values are averaged over the images that contain a defect.
"""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import torch
from anomalib.data import Batch
from anomalib.metrics import AnomalibMetric
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def _check_shapes(preds: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if preds.shape != target.shape:
        preds, target = preds.squeeze(), target.squeeze()
    if preds.shape != target.shape:
        msg = f"Predictions of shape {tuple(preds.shape)} do not match masks of shape {tuple(target.shape)}."
        raise ValueError(msg)
    return preds, target.bool()


def _binarise(preds: torch.Tensor) -> torch.Tensor:
    """Masks or labels as booleans; scores are cut at 0.5."""
    return preds.bool() if preds.dtype == torch.bool else preds >= 0.5


class _DiceScore(Metric):
    """Dataset-level Dice ``2 TP / (2 TP + FP + FN)`` of binary predictions; 1.0 when both are empty."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("true_positives", "false_positives", "false_negatives"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate counts; ``preds`` is binarised at 0.5 if it is not boolean."""
        preds, target = _check_shapes(preds, target)
        preds = _binarise(preds)
        self.true_positives += (preds & target).sum()
        self.false_positives += (preds & ~target).sum()
        self.false_negatives += (~preds & target).sum()

    def compute(self) -> torch.Tensor:
        """Return the pooled Dice."""
        denominator = 2 * self.true_positives + self.false_positives + self.false_negatives
        if denominator == 0:
            return torch.tensor(1.0)
        return 2 * self.true_positives.float() / denominator.float()


class Dice(AnomalibMetric, _DiceScore):  # type: ignore[misc]
    """Dataset-level Dice of ``pred_mask`` against ``gt_mask`` (use with ``prefix="pixel_"``)."""

    default_fields = ("pred_mask", "gt_mask")


class _MisjudgedShare(Metric):
    """Share of the predictions on one kind of image that misjudge it; NaN without such images.

    On good images (``labels`` 0) a flag is a false alarm; on defective ones, with ``on_defective``, a
    missing flag is an escape.
    """

    full_state_update = False
    on_defective = False  # which images count: good ones (false alarms) or defective ones (escapes)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("misjudged", "judged"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, labels: torch.Tensor) -> None:
        """Count the misjudged predictions; ``preds`` (labels or masks) is binarised at 0.5 if not boolean."""
        chosen = _binarise(preds)[labels.reshape(-1).bool() == self.on_defective]
        self.misjudged += (chosen != self.on_defective).sum()
        self.judged += chosen.numel()

    def compute(self) -> torch.Tensor:
        """Return the misjudged over the counted predictions."""
        return self.misjudged.float() / self.judged if self.judged > 0 else torch.tensor(float("nan"))


class EscapeRate(AnomalibMetric, _MisjudgedShare):  # type: ignore[misc]
    """Share of defective images (``pred_label``, ``gt_label``) that pass as good: the line's escapes.

    Reported beside ``image_FalseAlarmRate`` (good parts rejected): an image threshold trades one
    against the other.
    """

    on_defective = True


class FalseAlarmRate(AnomalibMetric, _MisjudgedShare):  # type: ignore[misc]
    """Share of good images (``pred_label``, ``gt_label``) or of their pixels (``pred_mask``, ``gt_label``) flagged.

    The figure a false-alarm budget (:class:`~anomalib_rgi.FalseAlarmPostProcessor`) is checked
    against on test data. Pixels of defective images do not count: those beside a defect are lit by
    the map's smoothing, which is no false alarm on a good part.
    """


class QuantizationMetric:
    """The accuracy metric of an ``INT8_ACQ`` export, fit for a one-image graph.

    anomalib's accuracy-aware quantization squeezes the outputs of a one-image graph to 0-d tensors
    (image metrics then fail on the shapes), and hands the metric to every validation run NNCF makes
    (the original model, the quantized one, each candidate) without resetting it, so each run would
    be scored on the images of all earlier runs too. This wrapper gives 0-d fields back their batch
    dimension and resets the metric once computed.

    Args:
        metric (Metric): An anomalib metric, e.g. ``F1Score(fields=["pred_label", "gt_label"])``.

    """

    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def update(self, batch: Batch) -> None:
        """Accumulate one batch."""
        squeezed = {
            field.name: torch.atleast_1d(value)
            for field in fields(batch)
            if isinstance(value := getattr(batch, field.name), torch.Tensor) and value.ndim == 0
        }
        self.metric.update(replace(batch, **squeezed))

    def compute(self) -> torch.Tensor:
        """Return the metric of the images seen since the last call, and start afresh."""
        value = self.metric.compute()
        self.metric.reset()
        return value


def best_dice_per_image(anomaly_maps: torch.Tensor, masks: torch.Tensor, num_thresholds: int = 101) -> torch.Tensor:
    """Compute the paper's oracle Dice: per-image min-max normalisation, best of ``num_thresholds`` thresholds.

    Args:
        anomaly_maps (torch.Tensor): ``(N, H, W)`` (or ``(N, 1, H, W)``) maps.
        masks (torch.Tensor): Ground-truth masks of the same shape.
        num_thresholds (int): Thresholds spread evenly over [0, 1].

    Returns:
        torch.Tensor: ``(N,)`` best Dice per image (images without defect included; callers decide).

    """
    anomaly_maps, masks = _check_shapes(anomaly_maps.float(), masks)
    if anomaly_maps.dim() == 2:
        anomaly_maps, masks = anomaly_maps[None], masks[None]
    flat = anomaly_maps.flatten(1)
    low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    normalised = (flat - low) / (high - low).clamp_min(1e-12)
    truth = masks.flatten(1).float()
    thresholds = torch.linspace(0, 1, num_thresholds, device=flat.device)
    predicted = (normalised[:, None, :] >= thresholds[None, :, None]).float()
    intersection = (predicted * truth[:, None, :]).sum(-1)
    total = predicted.sum(-1) + truth.sum(-1, keepdim=True)
    dice = torch.where(total > 0, 2 * intersection / total.clamp_min(1), torch.ones_like(total))
    return dice.amax(dim=1)


class _PerImageBestDiceScore(Metric):
    """Mean over defective images of :func:`best_dice_per_image`."""

    full_state_update = False

    def __init__(self, num_thresholds: int = 101, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_thresholds = num_thresholds
        self.add_state("scores", default=[], dist_reduce_fx="cat")

    def update(self, anomaly_maps: torch.Tensor, masks: torch.Tensor) -> None:
        """Score the defective images of a batch."""
        anomaly_maps, masks = _check_shapes(anomaly_maps, masks)
        if masks.dim() == 2:
            anomaly_maps, masks = anomaly_maps[None], masks[None]
        defective = masks.flatten(1).any(dim=1)
        if defective.any():
            self.scores.append(best_dice_per_image(anomaly_maps[defective], masks[defective], self.num_thresholds))

    def compute(self) -> torch.Tensor:
        """Mean best Dice over defective images (NaN if there were none)."""
        # After a multi-process sync the list state arrives already concatenated into one tensor.
        scores = dim_zero_cat(self.scores) if isinstance(self.scores, torch.Tensor) or self.scores else None
        if scores is None or scores.numel() == 0:
            return torch.tensor(float("nan"))
        return scores.mean()


class PerImageBestDice(AnomalibMetric, _PerImageBestDiceScore):  # type: ignore[misc]
    """The RGI paper's per-image best-threshold Dice of ``anomaly_map`` (an oracle; see module doc)."""

    default_fields = ("anomaly_map", "gt_mask")


def ranking_quality(scores: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray) -> tuple[float, float]:
    """AUROC and dataset-level Dice at the best single threshold (``F1Max``), from one sort of flat arrays.

    Tied scores are one threshold, as anomalib's ``AUROC`` and ``F1Max`` take them: a map that is 0
    over most good pixels cannot claim a threshold inside that plateau. A fit's validation scores
    dozens of candidate maps this way, where the two metrics would sort every map twice.

    Args:
        scores (torch.Tensor | np.ndarray): Anomaly scores of all pixels of all images.
        truth (torch.Tensor | np.ndarray): Ground truth of the same pixels (both classes present).

    Returns:
        tuple[float, float]: The AUROC and ``max over t of 2 TP(t) / (P(t) + positives)``.

    """
    scores = torch.as_tensor(np.asarray(scores)).flatten().float()
    truth = torch.as_tensor(np.asarray(truth)).flatten().double()
    ordered, order = torch.sort(scores, descending=True)
    hits = torch.cumsum(truth[order], dim=0)
    last_of_tie = torch.ones_like(ordered, dtype=torch.bool)
    last_of_tie[:-1] = ordered[1:] != ordered[:-1]
    true_positives = hits[last_of_tie]
    predicted = torch.nonzero(last_of_tie).squeeze(1).double() + 1
    false_positives = predicted - true_positives
    positives, negatives = true_positives[-1], false_positives[-1]
    dice = float((2 * true_positives / (predicted + positives)).max())
    zero = torch.zeros(1, dtype=torch.double)
    recall = torch.cat([zero, true_positives / positives])
    fallout = torch.cat([zero, false_positives / negatives])
    return float(torch.trapezoid(recall, fallout)), dice


def best_dataset_dice(scores: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray) -> float:
    """Dataset-level Dice at the best single threshold (what ``F1Max`` computes), from flat arrays.

    Returns:
        float: ``max over t of 2 TP(t) / (P(t) + positives)`` (:func:`ranking_quality`).

    """
    return ranking_quality(scores, truth)[1]


def quality_per_defect(
    anomaly_maps: np.ndarray, masks: np.ndarray, defects: np.ndarray, scores: np.ndarray | None = None
) -> dict[str, dict[str, float]]:
    """Score each defect kind on its own images and the good ones, so a kind a model misses stands out.

    Args:
        anomaly_maps (np.ndarray): Anomaly maps, ``(N, H, W)``.
        masks (np.ndarray): Ground-truth masks, ``(N, H, W)``.
        defects (np.ndarray): Each image's defect kind, ``"good"`` for the defect-free ones, ``(N,)``.
        scores (np.ndarray | None): Image scores ``(N,)``; ``None``: each map's maximum.

    Returns:
        dict[str, dict[str, float]]: Per kind (sorted): ``image_AUROC`` (that kind's images against the
        good ones; NaN without good images), ``pixel_AUROC``, ``pixel_F1Max`` (dataset-level Dice at
        the best single threshold over those images) and ``pixel_PerImageBestDice`` (the paper's
        per-image oracle, averaged over that kind's images).

    """
    from sklearn.metrics import roc_auc_score  # noqa: PLC0415  (only the benchmark reports need it)

    defects = np.asarray(defects)
    anomaly_maps = anomaly_maps.astype(np.float32)
    scores = anomaly_maps.reshape(len(anomaly_maps), -1).max(axis=1) if scores is None else np.asarray(scores)
    good = defects == "good"
    result = {}
    for defect in sorted(set(defects.tolist()) - {"good"}):
        own = defects == defect
        chosen = own | good
        per_image = best_dice_per_image(torch.from_numpy(anomaly_maps[own]), torch.from_numpy(masks[own]))
        result[defect] = {
            "image_AUROC": float(roc_auc_score(own[chosen], scores[chosen])) if good.any() else float("nan"),
            "pixel_AUROC": float(roc_auc_score(masks[chosen].ravel(), anomaly_maps[chosen].ravel())),
            "pixel_F1Max": best_dataset_dice(anomaly_maps[chosen], masks[chosen]),
            "pixel_PerImageBestDice": float(per_image.mean()),
        }
    return result
