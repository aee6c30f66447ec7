"""Dice metrics against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.metrics import F1Max, F1Score
from torchmetrics.functional.classification import binary_auroc

from anomalib_rgi.metrics import (
    Dice,
    EscapeRate,
    PerImageBestDice,
    QuantizationMetric,
    best_dataset_dice,
    best_dice_per_image,
    quality_per_defect,
    ranking_quality,
)


def _batch(**fields) -> ImageBatch:
    size = next(iter(fields.values())).shape
    return ImageBatch(image=torch.zeros(size[0], 3, size[-2], size[-1]), **fields)


def test_dice_pools_counts_over_images():
    pred = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 1]]], dtype=torch.bool)
    truth = torch.tensor([[[1, 0], [1, 0]], [[0, 0], [0, 0]]], dtype=torch.bool)
    dice = Dice(prefix="pixel_")
    dice.update(_batch(pred_mask=pred, gt_mask=truth))
    # TP = 1, FP = 2, FN = 1: 2 / (2 + 2 + 1)
    assert dice.name == "pixel_Dice"
    assert dice.compute().item() == pytest.approx(0.4)


def test_dice_equals_anomalib_pixel_f1_on_binary_masks():
    torch.manual_seed(0)
    pred = torch.rand(4, 8, 8) > 0.6
    truth = torch.rand(4, 8, 8) > 0.7
    dice, f1 = Dice(), F1Score(fields=["pred_mask", "gt_mask"])
    batch = _batch(pred_mask=pred, gt_mask=truth)
    dice.update(batch)
    f1.update(batch)
    assert dice.compute().item() == pytest.approx(f1.compute().item(), abs=1e-6)


def test_dice_of_empty_prediction_and_truth_is_one_and_shapes_are_checked():
    dice = Dice()
    dice.update(
        _batch(pred_mask=torch.zeros(1, 4, 4, dtype=torch.bool), gt_mask=torch.zeros(1, 4, 4, dtype=torch.bool))
    )
    assert dice.compute().item() == 1.0
    with pytest.raises(ValueError, match="do not match"):
        Dice().update(_batch(pred_mask=torch.zeros(1, 4, 4), gt_mask=torch.zeros(1, 5, 5, dtype=torch.bool)))


def test_best_dice_per_image_uses_its_own_normalisation_and_best_threshold():
    maps = torch.tensor([[[10.0, 8.0], [2.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    truth = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [1, 0]]], dtype=torch.bool)
    scores = best_dice_per_image(maps, truth)
    # Image 0: normalised [1, .8, .2, 0]; a threshold in (0.2, 0.8] gives Dice 1.
    # Image 1: constant map -> every threshold marks all or nothing; best is all: 2*1/(4+1).
    assert scores.tolist() == pytest.approx([1.0, 0.4])


def test_per_image_best_dice_averages_defective_images_only():
    metric = PerImageBestDice(prefix="pixel_")
    maps = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.3, 0.2], [0.1, 0.9]]])
    truth = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 0]]], dtype=torch.bool)
    metric.update(_batch(anomaly_map=maps, gt_mask=truth))
    assert metric.name == "pixel_PerImageBestDice"
    assert metric.compute().item() == pytest.approx(1.0)


def test_best_dataset_dice_matches_f1max_by_hand():
    scores = np.array([0.9, 0.8, 0.4, 0.3, 0.1])
    truth = np.array([1, 0, 1, 0, 0], dtype=bool)
    # thresholds keep the top k: k=1 -> 2/3, k=2 -> 2/4, k=3 -> 4/5, k=4 -> 4/6, k=5 -> 4/7
    assert best_dataset_dice(scores, truth) == pytest.approx(0.8)


def test_ranking_quality_matches_anomalibs_auroc_and_f1max_with_ties():
    generator = torch.Generator().manual_seed(0)
    truth = torch.rand(4000, generator=generator) < 0.1
    # Most good pixels at exactly 0, as a map above a floor is; defects higher on average.
    scores = torch.where(truth, torch.rand(4000, generator=generator), torch.rand(4000, generator=generator) - 0.6)
    scores = scores.clamp(min=0).round(decimals=2)
    auroc, dice = ranking_quality(scores, truth)
    assert auroc == pytest.approx(float(binary_auroc(scores, truth.long())), abs=1e-6)
    f1max = F1Max(fields=["anomaly_map", "gt_mask"])
    f1max.update(_batch(anomaly_map=scores.view(1, 40, 100), gt_mask=truth.view(1, 40, 100)))
    assert dice == pytest.approx(float(f1max.compute()), abs=1e-6)
    assert best_dataset_dice(scores, truth) == dice


def three_images_two_defects() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    masks = np.zeros((3, 2, 2), dtype=bool)
    masks[1, 0, 0] = masks[2, 0, 0] = True
    scores = np.zeros((3, 2, 2), dtype=np.float32)
    scores[0, 1, 1] = 0.5  # a false alarm on the good image
    scores[1, 0, 0] = 1.0  # "hole": found, above the false alarm
    scores[2, 0, 0] = 0.2  # "foreign": below the false alarm
    return scores, masks, np.array(["good", "hole", "foreign"])


def test_quality_per_defect_scores_each_kind_against_the_good_images():
    anomaly_maps, masks, defects = three_images_two_defects()
    quality = quality_per_defect(anomaly_maps, masks, defects)
    assert list(quality) == ["foreign", "hole"]
    assert quality["hole"]["pixel_AUROC"] == pytest.approx(1.0)
    assert quality["foreign"]["pixel_AUROC"] == pytest.approx(6 / 7)  # ranked below 1 of 7 normal pixels
    # image maxima: good 0.5, hole 1.0, foreign 0.2
    assert quality["hole"]["image_AUROC"] == 1.0
    assert quality["foreign"]["image_AUROC"] == 0.0
    assert quality["hole"]["pixel_F1Max"] == pytest.approx(1.0)
    assert 0 < quality["foreign"]["pixel_PerImageBestDice"] <= 1
    by_score = quality_per_defect(anomaly_maps, masks, defects, scores=np.array([0.0, 1.0, 1.0]))
    assert by_score["foreign"]["image_AUROC"] == 1.0  # given image scores are used, not the maps' maxima
    assert np.isnan(quality_per_defect(anomaly_maps[1:], masks[1:], defects[1:])["hole"]["image_AUROC"])


def test_quantization_metric_takes_one_image_labels_and_scores_each_run_on_its_own_images():
    metric = QuantizationMetric(F1Score(fields=["pred_label", "gt_label"]))

    def one_image(predicted: bool, truth: bool) -> ImageBatch:  # anomalib squeezes pred_label to 0-d
        image = torch.rand(1, 3, 8, 8)
        return ImageBatch(image=image, pred_label=torch.tensor(predicted), gt_label=torch.tensor([truth]))

    metric.update(one_image(True, True))
    metric.update(one_image(False, True))
    assert metric.compute().item() == pytest.approx(2 / 3)
    metric.update(one_image(True, True))
    assert metric.compute().item() == pytest.approx(1.0)


def test_escape_rate_counts_unflagged_defective_images_only():
    batch = ImageBatch(
        image=torch.zeros(6, 3, 2, 2),
        pred_label=torch.tensor([1, 0, 1, 0, 0, 1]),
        gt_label=torch.tensor([0, 0, 1, 1, 1, 1]),
    )
    metric = EscapeRate(fields=["pred_label", "gt_label"], prefix="image_")
    metric.update(batch)
    assert metric.compute().item() == pytest.approx(0.5)  # two of four defective images pass
