"""Rgi(input_size=k * image_size): large images cut into the prior's tiles, each inverted on its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from anomalib.deploy import OpenVINOInferencer

from anomalib_rgi import Rgi
from anomalib_rgi.data import build_category
from anomalib_rgi.models.rgi.torch_model import RgiModel

from .conftest import TINY_MODEL, fit_tiny


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    work = tmp_path_factory.mktemp("tiled")
    build_category(work / "data", "grass", crop_size=64, num_train=16, num_test_good=4, num_test_defective=4, seed=0)
    engine, model, datamodule = fit_tiny(
        work / "data", work, crop_size=64, input_size=64, anomaly_map="mask+feature_distance", feature_weight=0.5
    )
    metrics = engine.test(model=model, datamodule=datamodule)[0]
    return engine, model.eval(), metrics, work


def test_tiles_are_the_images_crops_and_stitch_back():
    model = RgiModel(image_size=16, latent_stride=4, latent_channels=2, base_channels=4, input_size=48)
    images = torch.rand(2, 3, 48, 48)
    tiles = model.tile(images)
    assert tiles.shape == (18, 3, 16, 16)
    torch.testing.assert_close(tiles[9 + 5], images[1, :, 16:32, 32:48])  # image 1, row 1, column 2
    torch.testing.assert_close(model.untile(tiles), images)


def test_each_tile_is_scored_as_the_prior_scores_it_alone(tiled):
    _, model, _, _ = tiled
    plain = RgiModel(
        image_size=32,
        **TINY_MODEL["prior"],
        solver={"steps": TINY_MODEL["steps"]},
        anomaly_map="mask+feature_distance",
        feature_weight=0.5,
    )
    plain.load_state_dict(model.model.state_dict())
    plain.eval()
    images = torch.rand(2, 3, 64, 64)
    tiled_map = model.model(images).anomaly_map
    for row in (0, 1):
        for column in (0, 1):
            crop = (slice(None), slice(None), slice(32 * row, 32 * row + 32), slice(32 * column, 32 * column + 32))
            torch.testing.assert_close(tiled_map[crop], plain(images[crop]).anomaly_map, atol=1e-5, rtol=1e-4)


def test_tiled_model_trains_tests_and_shows_whole_images(tiled):
    _, _, metrics, work = tiled
    assert 0.0 <= metrics["pixel_AUROC"] <= 1.0
    assert 0.0 <= metrics["pixel_Dice"] <= 1.0
    pictures = list(work.rglob("images/**/*.png"))
    assert pictures, "the visualizer wrote no pictures"


def test_tiled_model_exports_to_openvino_and_matches_torch(tiled, tmp_path):
    _, model, _, _ = tiled
    path = model.to_openvino(export_root=tmp_path)
    inferencer = OpenVINOInferencer(path=path, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
    image = torch.rand(1, 3, 64, 64)
    prediction = inferencer.predict(image.numpy())
    reference = model(image)
    np.testing.assert_allclose(prediction.anomaly_map.squeeze(), reference.anomaly_map.squeeze(), atol=1e-3)


@pytest.mark.parametrize("input_size", [48, 16])
def test_input_size_must_be_a_multiple_of_the_prior_size(input_size):
    with pytest.raises(ValueError, match="multiple of the prior's image_size"):
        Rgi(**TINY_MODEL, input_size=input_size)


def test_restoration_of_a_tiled_model_gives_whole_images(tiled):
    from anomalib_rgi.inpainting import restore

    _, model, _, _ = tiled
    result = restore(model, torch.rand(3, 3, 64, 64))
    assert result.restored.shape == (3, 3, 64, 64)
    assert result.masks.shape == (3, 1, 64, 64)
    assert result.losses.shape == (3,)
