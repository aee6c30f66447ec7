"""The anomalib model: fit/test through anomalib's Engine, checkpoints, divergence and bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from anomalib.engine import Engine
from PIL import Image

from anomalib_rgi import Rgi, RgiTextures
from anomalib_rgi.models.rgi import PriorDivergedError
from anomalib_rgi.models.rgi.loss import GeneratorLoss

from .conftest import TINY_DATA, TINY_MODEL, fit_tiny

EXPECTED_METRICS = {
    "image_AUROC",
    "pixel_AUROC",
    "pixel_F1Score",
    "pixel_AUPRO",
    "pixel_Dice",
    "pixel_F1Max",
    "pixel_PerImageBestDice",
}


@pytest.fixture(scope="module")
def fitted(tiny_data_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("run")
    engine, model, datamodule = fit_tiny(tiny_data_root, work)
    metrics = engine.test(model=model, datamodule=datamodule)[0]
    return engine, model, datamodule, metrics, work


def test_fit_and_test_report_dice_beside_auroc(fitted):
    *_, metrics, work = fitted
    assert set(metrics) >= EXPECTED_METRICS
    for name in EXPECTED_METRICS:
        assert 0.0 <= metrics[name] <= 1.0, name
    # pixel_Dice is the dataset-level Dice at the threshold, i.e. anomalib's pixel F1.
    assert metrics["pixel_Dice"] == pytest.approx(metrics["pixel_F1Score"], abs=1e-5)
    pictures = list(work.rglob("images/**/*.png"))
    assert pictures, "the visualizer wrote no pictures"
    with Image.open(pictures[0]) as picture:
        assert picture.size == (5 * 256, 256)  # input, restored, map, predicted mask, ground truth


def test_state_keys_outside_the_network_stay_where_older_checkpoints_have_them():
    """Checkpoints load strictly: a metric with a buffer that moves in the evaluator's list breaks every older one."""
    outside = {key for key in Rgi(**TINY_MODEL).state_dict() if not key.startswith("model.")}
    thresholds = {f"post_processor.{name}" for name in ("_image_threshold", "_pixel_threshold")}
    ranges = {f"post_processor.{level}_{end}" for level in ("image", "pixel") for end in ("min", "max")}
    assert outside == thresholds | ranges | {"evaluator.test_metrics.4.fpr_limit"}


def test_checkpoint_round_trip_under_weights_only(fitted):
    engine, model, _, _, _ = fitted
    checkpoint = engine.trainer.checkpoint_callback.best_model_path
    loaded = Rgi.load_from_checkpoint(checkpoint, weights_only=True)
    for (name, original), (_, restored) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(original.cpu(), restored.cpu()), name
    images = torch.rand(2, 3, 32, 32)
    model.eval()
    loaded.eval()
    first, second = model(images), loaded(images)
    assert torch.allclose(first.anomaly_map, second.anomaly_map, atol=1e-6)
    assert torch.equal(first.pred_label, second.pred_label)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    path = tmp_path / "padim.ckpt"
    torch.save(
        {"state_dict": {"model.memory_bank": torch.zeros(3)}, "hyper_parameters": {"backbone": "resnet18"}}, path
    )
    with pytest.raises(ValueError, match="not written by Rgi"):
        Rgi.load_from_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Rgi.load_from_checkpoint(tmp_path / "missing.ckpt")


def test_checkpoint_of_another_architecture_is_refused(fitted, tiny_data_root, tmp_path):
    engine, *_ = fitted
    checkpoint = engine.trainer.checkpoint_callback.best_model_path
    other = Rgi(**{**TINY_MODEL, "prior": {**TINY_MODEL["prior"], "base_channels": 8}})
    trainer_engine = Engine(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1)
    datamodule = RgiTextures(root=tiny_data_root, category="grass", **TINY_DATA)
    with pytest.raises(ValueError, match="base_channels"):
        trainer_engine.test(model=other, datamodule=datamodule, ckpt_path=checkpoint)


def test_diverging_training_stops_and_keeps_last_good_checkpoint(tiny_data_root, tmp_path, monkeypatch):
    original = GeneratorLoss.forward

    def diverge_in_second_epoch(self, images, *args):
        losses = original(self, images, *args)
        if Rgi.current_epoch_seen >= 1:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(GeneratorLoss, "forward", diverge_in_second_epoch)
    monkeypatch.setattr(Rgi, "current_epoch_seen", 0, raising=False)
    monkeypatch.setattr(
        Rgi, "on_train_epoch_start", lambda self: setattr(Rgi, "current_epoch_seen", self.current_epoch)
    )
    with pytest.raises(PriorDivergedError, match="diverged"):
        fit_tiny(tiny_data_root, tmp_path, max_epochs=3)
    checkpoints = list(tmp_path.rglob("*.ckpt"))
    assert len(checkpoints) == 1
    state = torch.load(checkpoints[0], weights_only=False)
    assert state["epoch"] == 0
    weights = {name: value for name, value in state["state_dict"].items() if name.startswith("model.")}
    assert weights
    assert all(torch.isfinite(value).all() for value in weights.values())


def test_empty_training_folder_is_refused(tiny_data_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_data_root / "grass", root / "grass")
    for image in (root / "grass" / "train" / "good").iterdir():
        image.unlink()
    with pytest.raises(ValueError, match="training set is empty"):
        fit_tiny(root, tmp_path / "run")


def test_unreadable_training_image_is_named(tiny_data_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_data_root / "grass", root / "grass")
    broken = root / "grass" / "train" / "good" / "003.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(Exception, match=r"003\.png"):
        fit_tiny(root, tmp_path / "run")


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.rand(1, 1, 32, 32), "scores images of shape"),
        (torch.rand(1, 3, 48, 48), "scores images of shape"),
        (torch.rand(3, 32, 32), "scores images of shape"),
        (torch.full((1, 3, 32, 32), float("nan")), "NaN or Inf"),
    ],
)
def test_bad_images_give_clear_errors(images, message):
    model = Rgi(**TINY_MODEL).eval()
    with pytest.raises(ValueError, match=message):
        model.model(images)


def test_other_sizes_are_resized_by_the_pre_processor():
    model = Rgi(**TINY_MODEL).eval()
    output = model(torch.rand(1, 3, 50, 70))
    assert output.anomaly_map.shape[-2:] == (32, 32)


def _metrics_of_a_seeded_run(root: Path, work: Path) -> dict:
    engine, model, datamodule = fit_tiny(root, work)  # seeds
    return engine.test(model=model, datamodule=datamodule)[0]


def test_same_seed_gives_same_metrics(tiny_data_root, tmp_path):
    first = _metrics_of_a_seeded_run(tiny_data_root, tmp_path / "a")
    second = _metrics_of_a_seeded_run(tiny_data_root, tmp_path / "b")
    assert first == second


def test_training_set_smaller_than_a_batch_and_single_image_batches(tmp_path):
    from anomalib_rgi.data import build_category

    build_category(tmp_path / "data", "gravel", crop_size=32, num_train=3, num_test_good=2, num_test_defective=2)
    datamodule = RgiTextures(
        root=tmp_path / "data",
        category="gravel",
        crop_size=32,
        num_train=3,
        num_test_good=2,
        num_test_defective=2,
        train_batch_size=8,
        eval_batch_size=1,
    )
    model = Rgi(**TINY_MODEL)
    engine = Engine(default_root_dir=tmp_path / "run", logger=False, accelerator="cpu", devices=1)
    engine.fit(model=model, datamodule=datamodule)
    assert int(model.model.trained_steps) == 1
    metrics = engine.test(model=model, datamodule=datamodule)[0]
    assert 0.0 <= metrics["pixel_AUROC"] <= 1.0


def test_mixed_precision_trains_and_scores_in_float32(tiny_data_root, tmp_path):
    """Under ``precision="bf16-mixed"`` the GAN trains in bfloat16; scoring (lam / 2 = 0.01) must not."""
    engine, model, datamodule = fit_tiny(
        tiny_data_root, tmp_path, precision="bf16-mixed", anomaly_map="mask+feature_distance", feature_weight=0.5
    )
    metrics = engine.test(model=model, datamodule=datamodule)[0]
    assert 0.0 <= metrics["pixel_AUROC"] <= 1.0
    assert list(tmp_path.rglob("images/**/*.png")), "the visualizer wrote no pictures"
    images = torch.rand(2, 3, 32, 32)
    plain = model.eval()(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = model(images)
    assert autocast.anomaly_map.dtype == torch.float32
    torch.testing.assert_close(autocast.anomaly_map, plain.anomaly_map)


def test_validation_on_good_images_alone_learns_thresholds_that_pass_them(tiny_data_root, tmp_path):
    """Good parts only: ``val_split_mode="from_train"`` and the last epoch (no masks to choose one with)."""
    datamodule = RgiTextures(root=tiny_data_root, category="grass", **TINY_DATA, val_split_mode="from_train")
    model = Rgi(**TINY_MODEL, anomaly_map="mask+feature_distance", feature_weight=0.5)
    engine = Engine(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1)
    engine.fit(model=model, datamodule=datamodule)
    assert all(int(item.gt_label) == 0 for item in datamodule.val_data)
    assert torch.isfinite(model.post_processor.image_threshold)
    assert torch.isfinite(model.post_processor.pixel_threshold)
    predictions = engine.predict(model=model, dataloaders=datamodule.val_dataloader())
    flagged = torch.cat([batch.pred_label.reshape(-1) for batch in predictions])
    assert flagged.sum() <= 1, "the threshold falls back to the highest good score: at most that image is flagged"
    metrics = engine.test(model=model, datamodule=datamodule)[0]
    assert 0.0 <= metrics["pixel_Dice"] <= 1.0
