"""The coarse residual: the GAN prior's own part for faint, spread-out defects beside the mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomalib_rgi import Rgi
from anomalib_rgi.models.rgi.anomaly_map import ADDED_PARTS, AnomalyMap, CoarseResidual, describe_map, weigh
from anomalib_rgi.models.rgi.map_selection import choose_settings
from anomalib_rgi.models.rgi.torch_model import RgiModel

from .conftest import TINY_PRIOR, fit_tiny, maps_in_openvino_and_torch

COARSE = {"anomaly_map": "mask+coarse_residual", "feature_weight": 0.5}


def _grain(generator: torch.Generator, size: int = 64) -> torch.Tensor:
    """Zero-mean grain of +-0.2, as a prior's residual on normal texture."""
    return 0.2 * (2 * torch.randint(0, 2, (1, 1, size, size), generator=generator) - 1).float().expand(1, 3, -1, -1)


def test_the_coarse_residual_adds_up_a_faint_stain_no_pixel_of_the_mask_sees():
    generator = torch.Generator().manual_seed(0)
    start = torch.zeros(1, 3, 64, 64)
    stained = start + _grain(generator)
    stained[..., 16:48, 16:48] += 0.08  # each pixel's change is below the grain's
    part = CoarseResidual(window=17, size=64)(stained, start)[0, 0]
    assert part[24:40, 24:40].mean() > 3 * part[:8, :8].mean()


def test_a_hue_shift_counts_though_its_channels_cancel():
    start = torch.zeros(1, 3, 64, 64)
    shifted = start.clone()
    shifted[:, 0, 16:48, 16:48] += 0.15
    shifted[:, 2, 16:48, 16:48] -= 0.15
    assert (shifted - start).mean(dim=1).abs().max() == 0  # a grey reading sees nothing
    part = CoarseResidual(window=9, size=64)(shifted, start)[0, 0]
    assert part[28:36, 28:36].mean() == pytest.approx(0.1, abs=1e-5)
    assert part[:4, :4].max() == 0


def test_a_start_off_in_colour_everywhere_does_not_hide_a_defect_that_moves_a_channel_back():
    generator = torch.Generator().manual_seed(0)
    # The prior's start reads every image about 0.2 too low in red: its residual on normal texture is +0.2.
    good = torch.cat([_grain(generator) for _ in range(4)])
    good_start = good.clone()
    good_start[:, 0] -= 0.2 + 0.02 * torch.randn(4, 64, 64, generator=generator)
    defective, start = good[:1].clone(), good_start[:1]
    defective[:, 0, 16:48, 16:48] -= 0.2  # a tint that takes the red back: the residual there is 0
    part = CoarseResidual(window=9, channels=3, size=64)
    uncentred = part(defective, start)[0, 0]
    assert uncentred[28:36, 28:36].mean() < uncentred[:4, :4].mean()  # ranked below normal texture
    part.fit_normal(good, good_start)
    assert part.centre[0, :, :4, :4].mean(dim=(1, 2)).tolist() == pytest.approx([0.2, 0.0, 0.0], abs=1e-2)
    centred = part(defective, start)[0, 0]
    assert centred[28:36, 28:36].mean() > 5 * centred[:4, :4].mean()


def test_the_normal_level_is_learned_per_position_so_a_border_the_prior_misses_is_not_a_band():
    generator = torch.Generator().manual_seed(0)
    good = torch.cat([_grain(generator) for _ in range(8)])
    good_start = good + 0.01 * torch.randn(8, 3, 64, 64, generator=generator)
    good_start[..., :6, :] -= 0.3  # the generator's padding: every good image's top rows are missed
    part = CoarseResidual(window=9, channels=3, size=64)
    part.fit_normal(good, good_start)
    image, start = good[:1], good_start[:1]
    centred = part(image, start)[0, 0]
    assert centred[:4].mean() < 2 * centred[24:40].mean()  # the border at its usual level, no band
    with pytest.raises(ValueError, match="at least 2 good images"):
        part.fit_normal(good[:1], good_start[:1])


def test_calibration_centres_the_coarse_residual_on_the_good_images():
    torch.manual_seed(0)
    rgi = RgiModel(image_size=32, anomaly_map="mask+coarse_residual", feature_weight=0.5, **TINY_PRIOR)
    coarse = rgi.anomaly_map.coarse_residual
    assert torch.equal(coarse.centre, torch.zeros(1, 3, 32, 32))  # unfitted
    assert torch.equal(coarse.spread, torch.ones(1, 3, 32, 32))
    rgi.calibrate_feature_scale(torch.rand(4, 3, 32, 32))
    assert not torch.equal(coarse.centre, torch.zeros(1, 3, 32, 32))
    assert (coarse.spread > 0).all()
    assert float(coarse.scale) > 0


def test_validation_chooses_among_the_mask_with_or_without_the_coarse_residual_beside_the_feature_prior():
    weights = [0.5, 2.0]
    candidates = AnomalyMap("best_on_validation", weights, image_size=32).candidates
    assert candidates[0] == dict.fromkeys(ADDED_PARTS, 0.0)  # the mask alone first: ties go to it
    assert candidates[1:3] == [dict.fromkeys(ADDED_PARTS, 0.0) | {"coarse_residual": w} for w in weights]
    combinations = {tuple(candidate[part] for part in ADDED_PARTS) for candidate in candidates}
    assert len(combinations) == len(candidates) == (1 + len(weights)) ** 2
    assert not any(candidate["feature_distance"] for candidate in candidates)


def test_the_coarse_floor_keeps_only_what_the_coarse_residual_has_above_it():
    # Texture at its usual coarse level, a thin crack (high in the mask, little coarse), a faint stain.
    parts = {"mask": torch.tensor([0.0, 0.6, 0.0]), "coarse_residual": torch.tensor([0.5, 0.3, 0.9])}
    settings = dict.fromkeys(ADDED_PARTS, 0.0) | {"coarse_residual": 4.0, "mask_floor": 0.0}
    unfloored = weigh(parts, settings)
    assert unfloored[0] > unfloored[1]  # the texture's coarse level, at a heavy weight, hides the crack
    floored = weigh(parts, settings | {"coarse_floor": 0.5})
    torch.testing.assert_close(floored, torch.tensor([0.0, 0.6, 1.6]))  # the crack above the texture, the stain kept
    assert describe_map(settings | {"coarse_floor": 0.5}) == "mask + coarse residual x4 above 0.5"


def test_validation_learns_the_coarse_floor_with_the_mask_floor():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1])
    parts = {"mask": torch.rand(4, 1, 8, 8), "coarse_residual": torch.rand(4, 1, 8, 8) + labels.view(4, 1, 1, 1)}
    gt_mask = labels.view(4, 1, 1).expand(4, 8, 8).clone()
    current = dict.fromkeys(ADDED_PARTS, 0.0) | {"mask_floor": float("nan"), "coarse_floor": 0.0}
    candidates = [dict.fromkeys(ADDED_PARTS, 0.0) | {"coarse_residual": 1.0}]
    chosen, _, _ = choose_settings([(parts, gt_mask, labels)], current, candidates, mask_floor_quantile=0.9)
    good = parts["coarse_residual"][:2].flatten()
    assert chosen["coarse_floor"] == pytest.approx(float(good.quantile(0.9)), abs=0.02)
    assert chosen["mask_floor"] == pytest.approx(float(parts["mask"][:2].flatten().quantile(0.9)), abs=0.02)
    # Without a floor quantile neither floor is learned; without the part kept, its floor stays.
    unfloored, _, _ = choose_settings([(parts, gt_mask, labels)], current, candidates, mask_floor_quantile=0.0)
    assert unfloored["coarse_floor"] == 0.0
    mask_only = {"mask": parts["mask"]}
    kept_floor, _, _ = choose_settings([(mask_only, gt_mask, labels)], current, [], mask_floor_quantile=0.9)
    assert kept_floor["coarse_floor"] == 0.0


def test_preparing_a_part_the_map_does_not_weigh_keeps_the_others_and_their_thresholds():
    torch.manual_seed(0)
    rgi = RgiModel(image_size=32, anomaly_map="best_on_validation", feature_weight=[0.5], **TINY_PRIOR)
    images = torch.rand(4, 3, 32, 32)
    # A prior fitted before the coarse residual existed: its feature parts ready, the new part's scale NaN.
    rgi.fit_feature_prior(images)
    rgi.calibrate_feature_scale(images, ["feature_distance", "feature_prior"])
    rgi.anomaly_map.set_settings(dict.fromkeys(ADDED_PARTS, 0.0) | {"feature_distance": 0.5, "mask_floor": 0.0})
    distance_scale = float(rgi.anomaly_map.feature_distance.scale)
    assert torch.isnan(rgi.anomaly_map.coarse_residual.scale)
    assert rgi.prepare_feature_parts(images) is False  # its thresholds still hold
    assert float(rgi.anomaly_map.feature_distance.scale) == distance_scale
    assert float(rgi.anomaly_map.coarse_residual.scale) > 0
    # Weighed by the map, a newly prepared part makes the thresholds stale.
    rgi.anomaly_map.coarse_residual.scale.fill_(float("nan"))
    rgi.anomaly_map.set_settings(rgi.anomaly_map.settings | {"coarse_residual": 0.5, "feature_distance": 0.0})
    assert rgi.prepare_feature_parts(images) is True


@pytest.fixture(scope="module")
def fitted_with_coarse_residual(tiny_data_root, tmp_path_factory):
    return fit_tiny(tiny_data_root, tmp_path_factory.mktemp("coarse"), **COARSE)


def test_fit_calibrates_the_coarse_residual_and_the_checkpoint_keeps_it(fitted_with_coarse_residual):
    engine, model, _ = fitted_with_coarse_residual
    scale = float(model.model.anomaly_map.coarse_residual.scale)
    assert np.isfinite(scale)
    assert scale > 0
    assert model.model.anomaly_map.feature_distance is None  # no ImageNet network in this map
    centre = model.model.anomaly_map.coarse_residual.centre
    assert centre.abs().sum() > 0  # learned on the calibration crops, not the unfitted 0
    loaded = Rgi.load_from_checkpoint(engine.trainer.checkpoint_callback.best_model_path, weights_only=True)
    assert float(loaded.model.anomaly_map.coarse_residual.scale) == pytest.approx(scale)
    assert torch.allclose(loaded.model.anomaly_map.coarse_residual.centre, centre)


@pytest.mark.parametrize("coarse_floor", [0.0, 0.05])
def test_the_coarse_residual_map_exports_and_matches_torch(fitted_with_coarse_residual, tmp_path, coarse_floor):
    _, model, _ = fitted_with_coarse_residual
    anomaly_map = model.model.anomaly_map
    saved = dict(anomaly_map.settings)
    anomaly_map.set_settings(saved | {"coarse_floor": coarse_floor})
    try:
        exported_map, torch_map = maps_in_openvino_and_torch(model, tmp_path)
    finally:
        anomaly_map.set_settings(saved)
    np.testing.assert_allclose(exported_map, torch_map, atol=1e-2)
