"""Bad data in the folders a plant points us at: each case ends in a clear error or a correct result."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomalib_rgi import Rgi, RgiTextures
from anomalib_rgi.data.image_io import ImageReadError, read_image, read_mask

from .conftest import TINY_DATA, TINY_MODEL, fit_tiny


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_16_bit_images_are_read_at_full_range_not_clipped(tmp_path):
    grey = np.random.default_rng(0).integers(0, 65536, size=(20, 30), dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    image = read_image(tmp_path / "grey16.png", as_tensor=True)
    assert image.shape == (3, 20, 30)
    assert torch.allclose(image[1], torch.from_numpy(grey / 65535.0).float(), atol=1e-6)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "RGB"])
def test_8_bit_modes_are_read_as_anomalib_reads_them(tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, size=(16, 16, 3), dtype=np.uint8))
    rgb.convert(mode).save(tmp_path / "image.png")
    from anomalib.data.utils.image import read_image as host_read_image

    expected = host_read_image(tmp_path / "image.png", as_tensor=True)
    assert torch.equal(read_image(tmp_path / "image.png", as_tensor=True), expected)
    assert np.array_equal(read_image(tmp_path / "image.png"), host_read_image(tmp_path / "image.png"))


@pytest.mark.parametrize(
    ("damage", "message"),
    [(_truncate, "truncated"), (lambda path: path.write_bytes(b""), "empty"), (lambda path: path.write_text("x"), "")],
)
def test_unreadable_files_are_named(tmp_path, damage, message):
    path = tmp_path / "part_0042.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(path)
    damage(path)
    for reader in (read_image, read_mask):
        with pytest.raises(ImageReadError, match=rf"part_0042\.png.*{message}"):
            reader(path, as_tensor=True)


def test_floating_point_images_are_refused(tmp_path):
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ImageReadError, match="floating-point"):
        read_image(tmp_path / "float.tif")


@pytest.fixture
def data_copy(tiny_data_root, tmp_path) -> Path:
    shutil.copytree(tiny_data_root / "grass", tmp_path / "data" / "grass")
    return tmp_path / "data"


def _fit_and_test(root: Path, work: Path, eval_batch_size: int = 8) -> dict:
    engine, model, datamodule = fit_tiny(root, work, eval_batch_size=eval_batch_size)
    return engine.test(model=model, datamodule=datamodule)[0]


@pytest.mark.parametrize("folder", ["train/good", "test/good", "test/scratch"])
@pytest.mark.parametrize("damage", [_truncate, lambda path: path.write_bytes(b"")], ids=["truncated", "zero-byte"])
def test_a_damaged_file_in_train_or_test_is_named(data_copy, tmp_path, folder, damage):
    broken = data_copy / "grass" / folder / "000.png"
    damage(broken)
    with pytest.raises(ImageReadError, match=rf"{folder}/000\.png"):
        _fit_and_test(data_copy, tmp_path / "run")


def test_mixed_sizes_modes_and_constant_images_train_and_test(data_copy, tmp_path):
    train, test = data_copy / "grass" / "train" / "good", data_copy / "grass" / "test" / "good"
    rgb = np.asarray(Image.open(train / "001.png").convert("RGB"))
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])).save(train / "001.png")  # RGBA
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(train / "002.png")  # 16-bit grey
    Image.fromarray(rgb[..., 0]).resize((48, 40)).save(train / "003.png")  # 8-bit grey, another size
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(train / "004.png")  # constant
    Image.fromarray(np.full((32, 32), 65535, np.uint16)).save(test / "000.png")  # constant, 16-bit
    Image.fromarray(rgb).resize((64, 64)).save(test / "001.png")  # another size

    datamodule = RgiTextures(root=data_copy, category="grass", **TINY_DATA)
    datamodule.setup()
    items = {Path(path).name: index for index, path in enumerate(datamodule.train_data.samples.image_path)}
    sixteen_bit = datamodule.train_data[items["002.png"]].image
    assert torch.allclose(sixteen_bit[0], torch.from_numpy(rgb[..., 0] / 255.0).float(), atol=1e-4)

    metrics = _fit_and_test(data_copy, tmp_path / "run")
    assert all(math.isfinite(value) for value in metrics.values())


def test_all_constant_image_gives_a_finite_map():
    model = Rgi(**TINY_MODEL).eval()
    output = model(torch.full((1, 3, 32, 32), 0.5))
    assert torch.isfinite(output.anomaly_map).all()
    assert torch.isfinite(output.pred_score).all()


def test_a_mask_that_does_not_match_its_image_is_refused(data_copy, tmp_path):
    mask = data_copy / "grass" / "ground_truth" / "scratch" / "000_mask.png"
    Image.open(mask).resize((16, 32)).save(mask)
    with pytest.raises(
        ImageReadError, match=r"scratch/000_mask\.png is 16x32 but its image .*scratch/000\.png is 32x32"
    ):
        _fit_and_test(data_copy, tmp_path / "run")
