"""The anomaly map: the mask, its ImageNet-feature parts, their calibration, the floor and the choice on validation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.engine import Engine
from anomalib.metrics import AUROC, Evaluator, F1Max
from anomalib.models.components import GaussianBlur2d

from anomalib_rgi import Rgi
from anomalib_rgi.data import RgiTextures
from anomalib_rgi.data.textures import load_photograph
from anomalib_rgi.models.rgi.anomaly_map import (
    ADDED_PARTS,
    AnomalyMap,
    SeparableGaussianBlur,
    gaussian_kernel,
    map_kind,
    weigh,
    window_mean,
)
from anomalib_rgi.models.rgi.checkpoint import match_map_state
from anomalib_rgi.models.rgi.feature_parts import FeatureDistance, FeaturePrior
from anomalib_rgi.models.rgi.map_selection import (
    DICE_TOLERANCE,
    PIXEL_AUROC_TOLERANCE,
    choose_settings,
    good_level,
    weighed_batch,
)
from anomalib_rgi.models.rgi.torch_model import RgiModel

from .conftest import TINY_DATA, TINY_MODEL, TINY_PRIOR, fit_tiny, maps_in_openvino_and_torch

DISTANCE = {"anomaly_map": "mask+feature_distance", "feature_weight": 0.5}
FEATURE_PRIOR = {"anomaly_map": "mask+feature_prior", "feature_weight": 1.0}


def _crop(category: str, size: int = 64) -> torch.Tensor:
    photo = load_photograph(category)[:size, :size]
    return torch.from_numpy(np.ascontiguousarray(photo)).expand(1, 3, size, size).clone()


def test_feature_distance_sees_a_foreign_patch_and_not_an_identical_image():
    distance = FeatureDistance().train()  # frozen: Lightning's train() must not change it
    grass = _crop("grass")
    assert distance(grass, grass).abs().max() < 1e-4
    patched = grass.clone()
    patched[..., 16:48, 16:48] = _crop("brick")[..., 16:48, 16:48]
    result = distance(patched, grass)[0, 0]
    inside, corner = result[24:40, 24:40].mean(), result[:6, :6].mean()
    assert inside > 3 * corner


def test_the_feature_map_leaves_a_seeded_prior_unchanged():
    torch.manual_seed(0)
    plain, plain_next_draw = Rgi(**TINY_MODEL), torch.rand(4)
    torch.manual_seed(0)
    with_map, with_map_next_draw = Rgi(**TINY_MODEL, **DISTANCE), torch.rand(4)
    torch.testing.assert_close(with_map_next_draw, plain_next_draw)  # training draws the same latents
    for name, value in plain.state_dict().items():
        if name != "model.anomaly_map.saved_settings":  # the map's own weights differ, and only they
            torch.testing.assert_close(with_map.state_dict()[name], value, equal_nan=True)  # unlearned: NaN


@pytest.fixture(scope="module")
def fitted_with_features(tiny_data_root, tmp_path_factory):
    engine, model, datamodule = fit_tiny(tiny_data_root, tmp_path_factory.mktemp("features"), **DISTANCE)
    return engine, model, datamodule


def test_fit_calibrates_the_scale_and_the_checkpoint_keeps_it(fitted_with_features):
    engine, model, _ = fitted_with_features
    scale = float(model.model.anomaly_map.feature_distance.scale)
    assert np.isfinite(scale)
    assert scale > 0
    loaded = Rgi.load_from_checkpoint(engine.trainer.checkpoint_callback.best_model_path, weights_only=True)
    assert float(loaded.model.anomaly_map.feature_distance.scale) == pytest.approx(scale)
    images = torch.rand(2, 3, 32, 32)
    model.eval()
    loaded.eval()
    torch.testing.assert_close(model(images).anomaly_map, loaded(images).anomaly_map)


def test_calibration_puts_the_weighted_feature_part_at_the_mask_maps_scale(fitted_with_features):
    _, model, _ = fitted_with_features
    rgi = model.model
    images = torch.rand(8, 3, 32, 32)
    rgi.calibrate_feature_scale(images)
    result = rgi.invert(images, steps=0, mask_solver="closed_form", finetune_steps=0)
    parts = rgi.anomaly_map.parts(result)
    distance, mask = parts["feature_distance"].quantile(0.99), parts["mask"].quantile(0.99)
    torch.testing.assert_close(distance, mask, rtol=1e-3, atol=1e-6)


def test_the_feature_map_sees_a_defect_the_fine_tuning_learned(fitted_with_features):
    _, model, _ = fitted_with_features
    rgi = model.model
    patched = _crop("grass", 32)
    patched[..., 8:24, 8:24] = _crop("brick", 32)[..., 8:24, 8:24]
    result = rgi.invert(patched, steps=0, mask_solver="closed_form", finetune_steps=0)
    memorised = replace(result, restored=result.target)  # as if R-RGI's per-image weights reproduced the image
    feature_part = rgi.anomaly_map.parts(memorised)["feature_distance"][0, 0]
    assert feature_part[12:20, 12:20].mean() > 2 * feature_part[:4, :4].mean() > 0


def _plain_checkpoint(engine: Engine, work: Path) -> Path:
    """The fitted prior's checkpoint with the feature map taken out: a prior trained without it."""
    checkpoint = engine.trainer.checkpoint_callback.best_model_path
    plain = Rgi.load_from_checkpoint(checkpoint, anomaly_map="mask")
    assert plain.model.anomaly_map.feature_distance is None
    assert not any("feature" in name for name in plain.state_dict())
    plain_path = work / "plain.ckpt"
    torch.save({**torch.load(checkpoint, weights_only=True), "state_dict": plain.state_dict()}, plain_path)
    return plain_path


def test_a_prior_trained_without_the_map_is_scored_with_it_only_after_calibration(fitted_with_features, tmp_path):
    engine, _, datamodule = fitted_with_features
    plain_path = _plain_checkpoint(engine, tmp_path)
    with_map = Rgi.load_from_checkpoint(plain_path, **DISTANCE).eval()
    plain_threshold = 123.0  # a threshold no map of these images reaches: it must be learned again
    with_map.post_processor._pixel_threshold.fill_(plain_threshold)
    images = torch.rand(2, 3, 32, 32)
    with pytest.raises(RuntimeError, match="calibrate_feature_scale"):
        with_map(images)
    # anomalib test with a datamodule: calibrated on its training images, thresholds learned again, scored
    test_engine = Engine(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1)
    metrics = test_engine.test(model=with_map, datamodule=datamodule)[0]
    assert float(with_map.model.anomaly_map.feature_distance.scale) > 0
    assert 0 <= metrics["pixel_AUROC"] <= 1
    assert torch.isfinite(with_map.eval()(images).anomaly_map).all()
    relearned = float(with_map.post_processor.pixel_threshold)
    assert relearned != pytest.approx(plain_threshold)
    validated = Rgi.load_from_checkpoint(plain_path, **DISTANCE)
    Engine(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1).validate(
        model=validated, datamodule=datamodule
    )
    assert relearned == pytest.approx(float(validated.post_processor.pixel_threshold), rel=1e-4)


def test_stale_thresholds_without_validation_images_are_refused(fitted_with_features, tiny_data_root, tmp_path):
    engine, _, _ = fitted_with_features
    with_map = Rgi.load_from_checkpoint(_plain_checkpoint(engine, tmp_path), **DISTANCE)
    no_validation = RgiTextures(root=tiny_data_root, category="grass", **TINY_DATA, val_split_mode="none")
    test_engine = Engine(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1)
    with pytest.raises(RuntimeError, match="thresholds were learned with another anomaly map"):
        test_engine.test(model=with_map, datamodule=no_validation)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({**DISTANCE, "feature_weight": -0.1}, "feature_weight must be a positive number"),
        ({**DISTANCE, "feature_weight": []}, "non-empty list"),
        ({**FEATURE_PRIOR, "feature_weight": [0.5, -0.1]}, "feature_weight must be"),
        ({**DISTANCE, "image_channels": 2}, "grey or RGB"),
        ({"anomaly_map": "mask+features"}, "anomaly_map must be one of"),
    ],
)
def test_bad_map_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        RgiModel(image_size=32, latent_stride=4, latent_channels=4, base_channels=4, **settings)


@pytest.mark.parametrize("inversion", [{"steps": 0, "mask_solver": "closed_form"}, {}], ids=["0 steps", "3 steps"])
def test_the_feature_map_exports_and_matches_torch(fitted_with_features, tmp_path, inversion):
    _, model, _ = fitted_with_features
    exported_map, torch_map = maps_in_openvino_and_torch(model, tmp_path, **inversion)
    np.testing.assert_allclose(exported_map, torch_map, atol=1e-2)


# The feature prior part: the Mahalanobis distance of ImageNet embeddings from a Gaussian of normal ones.


def test_the_feature_prior_marks_foreign_material_and_leaves_the_random_stream_alone():
    distance = FeatureDistance()
    grass = torch.cat([_crop("grass", 128)[..., i : i + 64, j : j + 64] for i in (0, 64) for j in (0, 64)])
    prior = FeaturePrior(sum(distance.features.feature_info.channels()), grid=16)
    torch.manual_seed(0)
    prior.fit(distance.embed(grass, 128))
    next_draw = torch.rand(4)
    torch.manual_seed(0)
    torch.testing.assert_close(torch.rand(4), next_draw)  # fitting drew nothing from the global stream
    assert prior.fitted
    patched = grass[:1].clone()
    patched[..., 16:48, 16:48] = _crop("brick")[..., 16:48, 16:48]
    residual = prior.residual(distance.embed(patched, 128))[0, 0]  # 16 x 16 positions
    inside, normal = (
        residual[6:10, 6:10].mean(),
        prior.residual(distance.embed(grass[:1], 128))[0, 0, 6:10, 6:10].mean(),
    )
    assert inside > 3 * normal
    with pytest.raises(ValueError, match="built for embeddings"):
        prior.fit(distance.embed(grass, 64))  # an 8 x 8 grid
    again = FeaturePrior(prior.centre.shape[1], grid=16)
    again.fit(distance.embed(grass, 128))
    for name, value in prior.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], value, equal_nan=True)  # scale: not calibrated


@pytest.fixture(scope="module")
def fitted_with_feature_prior(tiny_data_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("feature-prior")
    return fit_tiny(tiny_data_root, work, **FEATURE_PRIOR, prior=TINY_PRIOR)


def test_fit_fits_the_feature_prior_keeps_it_and_leaves_the_gan_as_it_was(
    fitted_with_feature_prior, fitted_with_features
):
    engine, model, _ = fitted_with_feature_prior
    rgi = model.model
    assert rgi.anomaly_map.feature_prior.fitted
    assert float(rgi.anomaly_map.feature_prior.scale) > 0
    result = rgi.invert(torch.rand(4, 3, 32, 32), steps=0, mask_solver="closed_form", finetune_steps=0)
    assert set(rgi.anomaly_map.parts(result, weighted_only=True)) == {"mask", "feature_prior"}  # no distance part
    restoration_gan = fitted_with_features[1].model.generator.state_dict()
    for name, value in rgi.generator.state_dict().items():  # same seed: the same GAN prior
        torch.testing.assert_close(value, restoration_gan[name])
    loaded = Rgi.load_from_checkpoint(engine.trainer.checkpoint_callback.best_model_path, weights_only=True).eval()
    assert loaded.model.anomaly_map.feature_prior.fitted
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model.eval()(images).anomaly_map, loaded(images).anomaly_map)
    distance_map = Rgi.load_from_checkpoint(engine.trainer.checkpoint_callback.best_model_path, **DISTANCE)
    assert distance_map.model.anomaly_map.feature_prior is None  # read with the distance part instead: weights dropped


def test_an_unfitted_feature_prior_is_refused_and_a_test_fits_it(fitted_with_features, tmp_path):
    engine, _, datamodule = fitted_with_features
    checkpoint = engine.trainer.checkpoint_callback.best_model_path  # trained with the restoration reference
    with_prior = Rgi.load_from_checkpoint(checkpoint, **FEATURE_PRIOR).eval()
    with pytest.raises(RuntimeError, match="fit_feature_prior"):
        with_prior(torch.rand(2, 3, 32, 32))
    test_engine = Engine(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1)
    metrics = test_engine.test(model=with_prior, datamodule=datamodule)[0]
    assert with_prior.model.anomaly_map.feature_prior.fitted
    assert float(with_prior.model.anomaly_map.feature_prior.scale) > 0
    assert 0 <= metrics["pixel_AUROC"] <= 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"prior": {"collapse_patience": 0}}, "collapse_patience must be at least 1"),
        ({"prior": {"feature_prior_step": 10}}, "Unknown prior settings"),
        ({"solver": {"mask_solver": "adm"}}, "mask_solver must be one of"),
        ({"solver": {"steps": 10}}, "an Rgi argument of its own"),
        ({"solver": {"latent_init": "random"}}, "latent_init must be one of"),
    ],
)
def test_bad_advanced_settings_are_refused_in_the_constructor(settings, message):
    with pytest.raises(ValueError, match=message):
        Rgi(**{**TINY_MODEL, **DISTANCE, **settings})


def test_a_retired_prior_setting_warns_and_is_not_saved():
    with pytest.warns(FutureWarning, match="closed form"):
        model = Rgi(**{**TINY_MODEL, **FEATURE_PRIOR, "prior": {**TINY_PRIOR, "feature_prior_steps": 1000}})
    assert "feature_prior_steps" not in model.hparams.prior


def test_an_autoencoder_feature_prior_from_an_earlier_version_is_fitted_again(fitted_with_feature_prior, tmp_path):
    engine, _, _ = fitted_with_feature_prior
    checkpoint = torch.load(engine.trainer.checkpoint_callback.best_model_path, weights_only=False)
    state = checkpoint["state_dict"]
    prefix = "model.anomaly_map.feature_prior."
    for name in [name for name in state if name.startswith(prefix)]:
        del state[name]
    # The autoencoder's buffers and first layer, as an earlier version saved them.
    state |= {f"{prefix}centre": torch.zeros(1, 120, 1, 1), f"{prefix}fitted": torch.tensor(True)}
    state |= {f"{prefix}scale": torch.tensor(1.0), f"{prefix}encoder.0.weight": torch.zeros(128, 120, 3, 3)}
    former = tmp_path / "former.ckpt"
    torch.save(checkpoint, former)
    loaded = Rgi.load_from_checkpoint(former)
    prior = loaded.model.anomaly_map.feature_prior
    assert not prior.fitted
    assert torch.isnan(prior.scale)
    assert "feature_prior" in loaded.model.unprepared_parts


@pytest.mark.parametrize("mask_floor", [0.0, 0.02])
def test_the_feature_prior_exports_and_matches_torch(fitted_with_feature_prior, tmp_path, mask_floor):
    _, model, _ = fitted_with_feature_prior
    anomaly_map = model.model.anomaly_map
    anomaly_map.set_settings(anomaly_map.settings | {"mask_floor": mask_floor})
    try:
        exported_map, torch_map = maps_in_openvino_and_torch(model, tmp_path, steps=0, mask_solver="closed_form")
    finally:
        anomaly_map.set_settings(anomaly_map.settings | {"mask_floor": 0.0})
    np.testing.assert_allclose(exported_map, torch_map, atol=1e-2)


def test_validation_chooses_the_map_and_learns_its_thresholds(tiny_data_root, tmp_path):
    weights = [0.5, 8.0]
    engine, model, datamodule = fit_tiny(
        tiny_data_root,
        tmp_path,
        max_epochs=2,
        select_epoch_every=1,
        anomaly_map="best_on_validation",
        feature_weight=weights,
        prior=TINY_PRIOR,
    )
    chosen = model.model.anomaly_map.settings
    checkpoint = engine.trainer.checkpoint_callback.best_model_path
    kept = Rgi.kept_validation(checkpoint)
    assert kept["anomaly_map"] == map_kind(chosen)
    assert kept["feature_weight"] == max(chosen[part] for part in ADDED_PARTS)
    # The choice travels in the checkpoint, whichever way it is loaded (the CLI builds from the config first).
    assert Rgi.load_from_checkpoint(checkpoint).model.anomaly_map.settings == chosen
    # The kept map is the lightest of the options that rank pixels nearly as well as the best one and
    # outline nearly as well as the best of those, the image score the option with the best image
    # AUROC: each scored as anomalib scores it.
    evaluator = Evaluator(
        val_metrics=[
            F1Max(fields=["anomaly_map", "gt_mask"], prefix="val_pixel_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="val_pixel_"),
            AUROC(fields=["pred_score", "gt_label"], prefix="val_image_"),
        ]
    )
    loaded = Rgi.load_from_checkpoint(checkpoint, evaluator=evaluator, strict=False)  # other metrics, other state
    rows = {}
    for option in loaded.model.anomaly_map.candidates:
        own_score = {f"score_{part}": weight for part, weight in option.items()}
        loaded.model.anomaly_map.set_settings(chosen | option | own_score)
        validated = Engine(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1)
        metrics = validated.validate(model=loaded, datamodule=datamodule)[0]
        rows[tuple(option.values())] = [
            metrics[f"val_{name}"] for name in ("pixel_F1Max", "pixel_AUROC", "image_AUROC")
        ]
        if option.items() <= chosen.items():
            threshold = float(loaded.post_processor.pixel_threshold)
    # The mask with or without the coarse residual, beside the feature prior or not, at each weight.
    assert len(rows) == (1 + len(weights)) ** 2
    assert len({dice for dice, _, _ in rows.values()}) > 1  # the options can be told apart
    best_pixel_auroc = max(pixel_auroc for _, pixel_auroc, _ in rows.values())
    ranks_near_best = {
        option: dice
        for option, (dice, pixel_auroc, _) in rows.items()
        if pixel_auroc >= best_pixel_auroc - PIXEL_AUROC_TOLERANCE
    }
    best_dice = max(ranks_near_best.values())
    eligible = [option for option, dice in ranks_near_best.items() if dice >= best_dice - DICE_TOLERANCE]
    lightest = min(eligible, key=lambda option: (sum(option), -ranks_near_best[option]))
    assert tuple(chosen[part] for part in loaded.model.anomaly_map.candidates[0]) == lightest
    assert kept["val_pixel_F1Max"] == pytest.approx(ranks_near_best[lightest], abs=1e-4)
    scoring = tuple(chosen[f"score_{part}"] for part in ADDED_PARTS)
    assert rows[scoring][2] == pytest.approx(max(image_auroc for *_, image_auroc in rows.values()), abs=1e-6)
    assert float(model.post_processor.pixel_threshold) == pytest.approx(threshold, rel=1e-4)


def test_a_fixed_map_scores_with_its_own_weight_whatever_the_checkpoint_chose(tiny_data_root, tmp_path):
    engine, _, _ = fit_tiny(tiny_data_root, tmp_path, **DISTANCE)
    checkpoint = engine.trainer.checkpoint_callback.best_model_path
    assert Rgi.load_from_checkpoint(checkpoint).model.anomaly_map.settings["feature_distance"] == 0.5
    heavier = Rgi.load_from_checkpoint(checkpoint, anomaly_map="mask+feature_distance", feature_weight=2.0)
    assert heavier.model.anomaly_map.settings["feature_distance"] == 2.0


def test_choosing_the_weight_without_defect_masks_is_refused(tiny_data_root, tmp_path):
    good_only = RgiTextures(root=tiny_data_root, category="grass", **TINY_DATA, val_split_mode="from_train")
    model = Rgi(**TINY_MODEL, anomaly_map="mask+feature_distance", feature_weight=[0.5, 1.0])
    engine = Engine(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1)
    with pytest.raises(ValueError, match="no defect masks"):
        engine.fit(model=model, datamodule=good_only)
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing half-written


def test_the_feature_prior_part_scores_tiled_inputs():
    rgi = RgiModel(image_size=32, **TINY_PRIOR, solver={"steps": 3}, input_size=64, **FEATURE_PRIOR).eval()
    images = torch.rand(3, 3, 64, 64)
    with pytest.raises(RuntimeError, match="fit_feature_prior"):
        rgi(images)
    rgi.fit_feature_prior(images)
    assert rgi.calibrate_feature_scale(images).keys() == {"feature_distance", "feature_prior"}
    anomaly_map = rgi(images).anomaly_map
    assert anomaly_map.shape == (3, 1, 64, 64)
    assert torch.isfinite(anomaly_map).all()


def test_the_mask_floor_keeps_only_what_exceeds_it_beside_a_feature_part():
    parts = {"mask": torch.tensor([0.1, 0.3, 0.7]), "feature_prior": torch.tensor([1.0, 0.0, 2.0])}
    floored = weigh(parts, {"feature_distance": 0.0, "feature_prior": 0.5, "mask_floor": 0.3})
    torch.testing.assert_close(floored, torch.tensor([0.5, 0.0, 1.4]))
    alone = weigh(parts, {"feature_distance": 0.0, "feature_prior": 0.0, "mask_floor": 0.3})
    torch.testing.assert_close(alone, parts["mask"])  # the mask alone: the paper's map, every level kept


def test_validation_learns_the_mask_floor_and_its_thresholds(tiny_data_root, tmp_path):
    engine, model, datamodule = fit_tiny(
        tiny_data_root, tmp_path, **FEATURE_PRIOR, mask_floor_quantile=0.75, prior=TINY_PRIOR
    )
    floor = model.model.anomaly_map.settings["mask_floor"]
    assert floor > 0
    kept = Rgi.kept_validation(engine.trainer.checkpoint_callback.best_model_path)
    assert kept["mask_floor"] == floor
    # The floor is the quantile of the mask map on the good validation images, scored again from the checkpoint.
    loaded = Rgi.load_from_checkpoint(engine.trainer.checkpoint_callback.best_model_path)
    assert loaded.model.anomaly_map.settings["mask_floor"] == floor
    good = torch.stack([item.image for item in datamodule.val_data if item.gt_label == 0])
    with torch.no_grad():
        masks = loaded.model.anomaly_map.mask_part(loaded.model.invert(loaded.pre_processor(good)))
    assert floor == pytest.approx(float(masks.flatten().quantile(0.75)), rel=0.02)
    # Its thresholds and Dice are those anomalib's validation gives with the floor.
    validated = Engine(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1)
    dice = validated.validate(model=loaded, datamodule=datamodule)[0]["val_pixel_F1Max"]
    assert kept["val_pixel_F1Max"] == pytest.approx(dice, abs=1e-4)
    assert float(model.post_processor.pixel_threshold) == pytest.approx(
        float(loaded.post_processor.pixel_threshold), rel=1e-4
    )


@pytest.mark.parametrize("quantile", [-0.1, 1.0])
def test_a_bad_mask_floor_quantile_is_refused(quantile):
    with pytest.raises(ValueError, match="mask_floor_quantile must be in"):
        Rgi(**TINY_MODEL, mask_floor_quantile=quantile)


def test_the_mask_floor_needs_good_validation_images():
    parts = {"mask": torch.rand(2, 1, 4, 4)}
    with pytest.raises(ValueError, match="the validation set has none"):
        good_level([(parts, torch.ones(2, 4, 4), torch.ones(2, dtype=torch.bool))], 0.9)


def test_a_prior_fitted_without_the_floor_is_refused_by_a_model_that_learns_one(fitted_with_features, tmp_path):
    engine, _, datamodule = fitted_with_features
    checkpoint = engine.trainer.checkpoint_callback.best_model_path
    tester = Engine(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1)
    unlearned = Rgi.load_from_checkpoint(checkpoint, mask_floor_quantile=0.9)
    with pytest.raises(RuntimeError, match="fitted without one"):
        tester.test(model=unlearned, datamodule=datamodule)
    assert tester.test(model=Rgi.load_from_checkpoint(checkpoint), datamodule=datamodule)[0]["pixel_AUROC"] > 0


def test_scoring_another_map_learns_its_thresholds_again(fitted_with_features, tmp_path):
    engine, _, datamodule = fitted_with_features
    checkpoint = engine.trainer.checkpoint_callback.best_model_path
    assert not Rgi.load_from_checkpoint(checkpoint).thresholds_stale
    mask_only = Rgi.load_from_checkpoint(checkpoint, anomaly_map="mask")
    assert mask_only.thresholds_stale  # learned for the mask plus the feature distance
    Engine(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1).test(
        model=mask_only, datamodule=datamodule
    )
    validated = Rgi.load_from_checkpoint(checkpoint, anomaly_map="mask")
    Engine(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1).validate(
        model=validated, datamodule=datamodule
    )
    relearned, expected = mask_only.post_processor.pixel_threshold, validated.post_processor.pixel_threshold
    assert float(relearned) == pytest.approx(float(expected), rel=1e-4)


def _kept_parts() -> list:
    """Validation parts where the Dice-best map misses half the defects and the best ranker outlines coarsely."""
    generator = torch.Generator().manual_seed(0)
    gt_mask = torch.zeros(8, 1, 16, 16, dtype=torch.bool)
    gt_mask[1:4, :, 4:8, 4:8] = True  # sharp defects: the mask outlines them exactly
    gt_mask[5:8, :, 8:12, 8:12] = True  # faint ones: the mask misses them
    noise = 0.05 * torch.rand(8, 1, 16, 16, generator=generator)
    mask = noise + gt_mask[:, :, :, :].float() * torch.tensor([0, 1, 1, 1, 0, 0, 0, 0.0]).view(8, 1, 1, 1)
    coarse = torch.nn.functional.max_pool2d(gt_mask.float(), 5, stride=1, padding=2) * 0.5 + noise
    parts = {"mask": mask, "feature_distance": noise.flip(0), "feature_prior": coarse}
    gt_label = torch.tensor([0, 1, 1, 1, 0, 1, 1, 1])
    return [(parts, gt_mask[:, 0], gt_label)]


def test_the_pixel_map_is_the_lightest_near_the_best_ranks_and_outlines_and_the_image_score_the_best_ranker():
    kept = _kept_parts()
    current = {"feature_distance": 0.0, "feature_prior": 0.0, "mask_floor": 0.0}
    candidates = [{"feature_distance": 0.0, "feature_prior": 0.0}] + [
        {"feature_distance": 0.0, "feature_prior": weight} for weight in (0.1, 4.0)
    ]
    chosen, dice, report = choose_settings(kept, current, candidates, mask_floor_quantile=0.0)
    rows = list(report.values())
    # The mask alone has the best Dice but ranks half the defective pixels as normal.
    assert rows[0]["Dice"] == max(row["Dice"] for row in rows)
    assert rows[0]["pixel_AUROC"] < max(row["pixel_AUROC"] for row in rows) - PIXEL_AUROC_TOLERANCE
    near = [
        i
        for i, row in enumerate(rows)
        if row["pixel_AUROC"] >= max(r["pixel_AUROC"] for r in rows) - PIXEL_AUROC_TOLERANCE
    ]
    best_dice = max(rows[i]["Dice"] for i in near)
    eligible = [i for i in near if rows[i]["Dice"] >= best_dice - DICE_TOLERANCE]
    lightest = min(eligible, key=lambda i: (candidates[i]["feature_prior"], -rows[i]["Dice"]))
    assert dice == rows[lightest]["Dice"]
    assert chosen["feature_prior"] == candidates[lightest]["feature_prior"] > 0
    best_ranker = max(range(len(rows)), key=lambda i: rows[i]["image_AUROC"])
    assert chosen["score_feature_prior"] == candidates[best_ranker]["feature_prior"]
    # The image score is the maximum of that map; the pixel map stays the chosen one.
    batch = weighed_batch(kept[0][0], chosen, torch.device("cpu"))
    expected = weigh(kept[0][0], {**chosen, "feature_prior": chosen["score_feature_prior"]}).flatten(1).amax(1)
    assert torch.allclose(batch.pred_score, expected)
    assert torch.allclose(batch.anomaly_map, weigh(kept[0][0], chosen).squeeze(1))


@pytest.mark.parametrize(
    "old",
    [
        # feature distance, feature prior, mask floor, floor learned
        [0.5, 0.0, 0.04, 1.0],
        # the same, then the image score's weights of the two feature parts
        [0.5, 0.0, 0.04, 0.5, 0.0, 1.0],
        # the coarse residual's weight first, then the same, then its image-score weight
        [0.0, 0.5, 0.0, 0.04, 0.0, 0.5, 0.0, 1.0],
    ],
    ids=["before image-score weights", "before the coarse residual", "before the coarse floor"],
)
def test_a_checkpoint_of_an_earlier_version_scores_as_it_did(old):
    own = AnomalyMap("best_on_validation", [0.5], learn_floor=True)
    state = {"model.anomaly_map.saved_settings": torch.tensor(old, dtype=torch.float64)}
    own_state = {f"model.anomaly_map.{name}": value for name, value in own.state_dict().items()}
    stale = match_map_state(state, own_state, fixed_map=False, floor_learned=True)
    assert not stale  # the same map as the thresholds were learned for
    own.load_state_dict({k.removeprefix("model.anomaly_map."): v for k, v in state.items()}, strict=False)
    assert own.settings == {
        "coarse_residual": 0.0,
        "feature_distance": 0.5,
        "feature_prior": 0.0,
        "mask_floor": pytest.approx(0.04),
        "coarse_floor": 0.0,
        "score_coarse_residual": 0.0,
        "score_feature_distance": 0.5,
        "score_feature_prior": 0.0,
    }
    assert own.weighted_parts() == {"feature_distance"}  # the new part needs no calibration to score


def test_an_earlier_coarse_residual_is_prepared_again_before_it_scores():
    own = AnomalyMap("mask+coarse_residual", 0.5, image_size=32)
    own_state = {f"model.anomaly_map.{name}": value for name, value in own.state_dict().items()}
    state = dict(own_state)
    # An earlier version: a square window, one level per channel, calibrated.
    state["model.anomaly_map.coarse_residual.centre"] = torch.full((1, 3, 1, 1), 0.1)
    state["model.anomaly_map.coarse_residual.spread"] = torch.full((1, 3, 1, 1), 0.2)
    state["model.anomaly_map.coarse_residual.scale"] = torch.tensor(3.0)
    match_map_state(state, own_state, fixed_map=True, floor_learned=False)
    own.load_state_dict({k.removeprefix("model.anomaly_map."): v for k, v in state.items()})
    assert own.coarse_residual.centre.shape == (1, 3, 32, 32)
    assert torch.isnan(own.coarse_residual.scale)  # unprepared: scoring fits it on the training images


def test_a_settings_buffer_no_version_wrote_is_refused():
    own = AnomalyMap("best_on_validation", [0.5], learn_floor=True)
    state = {"model.anomaly_map.saved_settings": torch.zeros(5, dtype=torch.float64)}
    own_state = {f"model.anomaly_map.{name}": value for name, value in own.state_dict().items()}
    with pytest.raises(ValueError, match="5 entries"):
        match_map_state(state, own_state, fixed_map=False, floor_learned=True)


def test_the_maps_separable_blur_equals_anomalibs():
    maps = torch.rand(2, 1, 48, 40)
    torch.testing.assert_close(SeparableGaussianBlur(4.0)(maps), GaussianBlur2d(sigma=4.0, channels=1)(maps))


def test_the_window_mean_is_round_and_keeps_its_level_at_the_border():
    kernel = gaussian_kernel(8.0)
    constant = torch.full((1, 3, 48, 40), 0.3)
    torch.testing.assert_close(window_mean(constant, kernel), constant)  # no darkening or band at the border
    point = torch.zeros(1, 1, 161, 161)
    point[..., 80, 80] = 1.0
    response = window_mean(point, kernel)[0, 0]
    # Points 20 px away weigh the same whichever way (a square window takes (16, 12) and drops (20, 0)).
    assert float(response[80 + 16, 80 + 12]) == pytest.approx(float(response[80 + 20, 80]), rel=1e-4)
    assert float(response[80, 80 + 20]) == pytest.approx(float(response[80 + 20, 80]), rel=1e-4)
