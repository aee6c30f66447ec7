"""Thresholds from a false-alarm budget: the quantile rule, the metric, and an Rgi fit on good images alone."""

from __future__ import annotations

import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.engine import Engine
from anomalib.metrics import F1AdaptiveThreshold
from anomalib.models import Padim
from lightning.pytorch import seed_everything

from anomalib_rgi import FalseAlarmPostProcessor, FalseAlarmRate, Rgi, RgiTextures
from anomalib_rgi.post_processing import FalseAlarmRateThreshold, false_alarm_threshold

from .conftest import TINY_DATA, TINY_MODEL


def _batch(maps: torch.Tensor, labels: list[int]) -> ImageBatch:
    scores = maps.flatten(1).amax(1)
    return ImageBatch(
        image=torch.zeros(len(labels), 3, *maps.shape[-2:]),
        anomaly_map=maps,
        pred_score=scores,
        gt_label=torch.tensor(labels),
    )


def test_a_budget_below_one_sample_extrapolates_a_normal_fit_above_the_highest_score():
    scores = torch.linspace(-1.5, 1.5, 20)  # mean 0, deviation about 0.93
    threshold = false_alarm_threshold(scores, 0.01)
    assert float(threshold) == pytest.approx(2.326 * float(scores.std()), rel=1e-3)
    assert threshold > scores.max()
    assert false_alarm_threshold(scores, 0.0) == scores.max()


@pytest.mark.parametrize(("rate", "flagged"), [(0.0, 0), (0.01, 1), (0.1, 10), (0.255, 25)])
def test_threshold_flags_the_budgeted_share_strictly_above_it(rate, flagged):
    scores = torch.randperm(100).float()
    threshold = false_alarm_threshold(scores, rate)
    assert int((scores > threshold).sum()) == flagged
    assert int((scores >= threshold).sum()) == flagged + 1, "the lowest such threshold"


@pytest.mark.parametrize("rate", [-0.1, 1.0, 2.0])
def test_rates_outside_zero_one_are_refused_by_name(rate):
    with pytest.raises(ValueError, match="pixel_false_alarm_rate must be in"):
        FalseAlarmPostProcessor(pixel_false_alarm_rate=rate)
    with pytest.raises(ValueError, match="image_false_alarm_rate must be in"):
        FalseAlarmPostProcessor(image_false_alarm_rate=rate)


def test_thresholds_read_good_images_only():
    maps = torch.rand(4, 8, 8)
    maps[3, :4] = 100.0  # a defect, far above every good pixel
    maps[3, 4:] = 50.0  # its image's other pixels, lit by the map's smoothing
    pixel, image = FalseAlarmRateThreshold(0.0, pixel=True), FalseAlarmRateThreshold(0.0, pixel=False)
    for metric in (pixel, image):
        metric.update(_batch(maps, [0, 0, 0, 1]))
    assert float(pixel.compute()) == pytest.approx(float(maps[:3].max()))
    assert float(image.compute()) == pytest.approx(float(maps[:3].max()))
    budget = FalseAlarmRateThreshold(0.1, pixel=True)
    budget.update(_batch(maps, [0, 0, 0, 1]))
    assert int((maps[:3] > budget.compute()).sum()) == int(0.1 * 3 * 64)


def test_threshold_without_scores_is_nan_and_without_good_data_an_error():
    unseen = FalseAlarmRateThreshold(0.01, pixel=True)
    unseen.update(ImageBatch(image=torch.zeros(1, 3, 4, 4)))
    assert torch.isnan(unseen.compute()), "anomalib then matches the other level's threshold"
    only_defects = FalseAlarmRateThreshold(0.01, pixel=False)
    only_defects.update(_batch(torch.rand(2, 4, 4), [1, 1]))
    with pytest.raises(ValueError, match="validate on some good images"):
        only_defects.compute()


def test_false_alarm_rate_counts_flags_on_good_images_only():
    pixels, images = FalseAlarmRate(fields=["pred_mask", "gt_label"]), FalseAlarmRate(fields=["pred_label", "gt_label"])
    pred_mask = torch.tensor([[[True, False], [False, False]], [[True, True], [True, True]], [[False] * 2] * 2])
    batch = ImageBatch(
        image=torch.zeros(3, 3, 2, 2),
        pred_mask=pred_mask,
        pred_label=torch.tensor([1, 1, 0]),
        gt_label=torch.tensor([0, 1, 0]),
    )
    pixels.update(batch)
    images.update(batch)
    assert float(pixels.compute()) == pytest.approx(1 / 8)
    assert float(images.compute()) == pytest.approx(1 / 2)
    only_defects = FalseAlarmRate(fields=["pred_label", "gt_label"])
    only_defects.update(
        ImageBatch(image=torch.zeros(1, 3, 2, 2), pred_label=torch.tensor([1]), gt_label=torch.tensor([1]))
    )
    assert torch.isnan(only_defects.compute())


def test_rgi_on_good_images_alone_keeps_the_budget(tiny_data_root, tmp_path):
    """The budget set on the validation images holds on them; the checkpoint keeps the rates."""
    seed_everything(0)
    datamodule = RgiTextures(root=tiny_data_root, category="grass", **TINY_DATA, val_split_mode="from_train")
    post_processor = FalseAlarmPostProcessor(pixel_false_alarm_rate=0.05, image_false_alarm_rate=0.5)
    model = Rgi(**TINY_MODEL, post_processor=post_processor)
    engine = Engine(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1)
    engine.fit(model=model, datamodule=datamodule)
    predictions = engine.predict(model=model, dataloaders=datamodule.val_dataloader())
    pixels = torch.cat([batch.pred_mask.reshape(-1) for batch in predictions]).float()
    images = torch.cat([batch.pred_label.reshape(-1) for batch in predictions]).float()
    assert 0.04 < float(pixels.mean()) <= 0.05
    assert float(images.mean()) == pytest.approx(0.5)
    metrics = engine.test(model=model, datamodule=datamodule)[0]
    assert 0.0 <= metrics["pixel_FalseAlarmRate"] <= 1.0
    assert 0.0 <= metrics["image_FalseAlarmRate"] <= 1.0
    checkpoint = engine.trainer.checkpoint_callback.best_model_path
    loaded = Rgi.load_from_checkpoint(checkpoint, weights_only=True, post_processor=FalseAlarmPostProcessor())
    assert loaded.post_processor.pixel_false_alarm_rate == 0.05
    assert loaded.post_processor.image_false_alarm_rate == 0.5
    assert torch.equal(loaded.post_processor.pixel_threshold, post_processor.pixel_threshold)


def test_budget_works_for_other_anomalib_models(tiny_data_root, tmp_path):
    """Nothing in the post-processor is Rgi's: PaDiM (random backbone, nothing downloaded) keeps the budget too."""
    datamodule = RgiTextures(root=tiny_data_root, category="grass", **TINY_DATA, val_split_mode="from_train")
    post_processor = FalseAlarmPostProcessor(pixel_false_alarm_rate=0.05)
    backbone = {"backbone": "resnet18", "pre_trained": False, "layers": ["layer1"], "n_features": 32}
    model = Padim(**backbone, post_processor=post_processor)
    engine = Engine(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1)
    engine.fit(model=model, datamodule=datamodule)
    predictions = engine.predict(model=model, dataloaders=datamodule.val_dataloader())
    pixels = torch.cat([batch.pred_mask.reshape(-1) for batch in predictions]).float()
    assert 0.04 < float(pixels.mean()) <= 0.05


def test_without_a_pixel_budget_the_pixel_threshold_stays_anomalibs_f1():
    post_processor = FalseAlarmPostProcessor(pixel_false_alarm_rate=None, image_false_alarm_rate=0.0)
    assert isinstance(post_processor._pixel_threshold_metric, F1AdaptiveThreshold)
    assert isinstance(post_processor._image_threshold_metric, FalseAlarmRateThreshold)
    restored = FalseAlarmPostProcessor()
    restored.load_checkpoint_config(post_processor.checkpoint_config())
    assert restored.pixel_false_alarm_rate is None
    assert isinstance(restored._pixel_threshold_metric, F1AdaptiveThreshold)
