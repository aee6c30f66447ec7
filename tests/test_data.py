"""The built-in data set: deterministic, disjoint, exact masks, never half-written."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalib_rgi.data import DEFECT_TYPES, RgiTextures, build_category, textures

SMALL = {"crop_size": 32, "num_train": 6, "num_test_good": 2, "num_test_defective": 4}


def _files(root):
    return sorted(path.relative_to(root) for path in root.rglob("*.png"))


def test_build_is_deterministic_for_a_seed(tmp_path):
    first = build_category(tmp_path / "a", "gravel", **SMALL, seed=3)
    second = build_category(tmp_path / "b", "gravel", **SMALL, seed=3)
    other = build_category(tmp_path / "c", "gravel", **SMALL, seed=4)
    assert _files(first) == _files(second)
    assert all(filecmp.cmp(first / name, second / name, shallow=False) for name in _files(first))
    assert not all(filecmp.cmp(first / name, other / name, shallow=False) for name in _files(first))


def test_layout_counts_and_masks(tmp_path):
    root = build_category(tmp_path, "brick", **SMALL)
    assert len(list((root / "train" / "good").glob("*.png"))) == 6
    assert len(list((root / "test" / "good").glob("*.png"))) == 2
    for defect in DEFECT_TYPES:
        images = sorted((root / "test" / defect).glob("*.png"))
        assert len(images) == 1
        mask = np.array(Image.open(root / "ground_truth" / defect / f"{images[0].stem}_mask.png"))
        assert set(np.unique(mask)) == {0, 255}
        assert 0 < (mask > 0).mean() < 0.5


def test_train_image_paths_lists_the_training_crops_in_order(tmp_path):
    root = build_category(tmp_path, "brick", **SMALL)
    everything = textures.train_image_paths(tmp_path, "brick")
    assert everything == sorted((root / "train" / "good").glob("*.png"))
    assert len(everything) == 6
    assert textures.train_image_paths(tmp_path, "brick", limit=4) == everything[:4]


def test_train_and_test_come_from_disjoint_rows(monkeypatch, tmp_path):
    seen = []
    original = textures._random_crop

    def record(photo, rows, size, rng):
        seen.append(rows)
        return original(photo, rows, size, rng)

    monkeypatch.setattr(textures, "_random_crop", record)
    build_category(tmp_path, "grass", **SMALL)
    split = int(512 * textures.TRAIN_ROW_FRACTION)
    train_rows, test_rows = seen[:6], seen[6:]
    assert all(rows == (0, split) for rows in train_rows)
    # the foreign-material source crops come from OTHER photographs, any rows
    assert sum(rows == (split, 512) for rows in test_rows) == 2 + 4


def test_defect_mask_marks_exactly_the_changed_pixels():
    rng = np.random.default_rng(0)
    crop = np.full((64, 64), 0.5, dtype=np.float32)
    for defect in ("scratch", "hole"):
        image, mask = textures.add_defect(crop, defect, rng, np.zeros_like(crop))
        changed = np.abs(image - crop) > 0.2
        assert np.array_equal(changed, mask), defect


def test_an_interrupted_build_leaves_nothing_behind(monkeypatch, tmp_path):
    calls = {"n": 0}
    original = textures._save

    def fail_later(array, path):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        original(array, path)

    monkeypatch.setattr(textures, "_save", fail_later)
    with pytest.raises(KeyboardInterrupt):
        build_category(tmp_path, "grass", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_bad_build_requests(tmp_path):
    with pytest.raises(ValueError, match="Unknown category 'wood'"):
        build_category(tmp_path, "wood")
    with pytest.raises(ValueError, match="Unknown category 'fabric' for version 1"):
        build_category(tmp_path, "fabric")
    with pytest.raises(ValueError, match="version must be one of"):
        build_category(tmp_path, "grass", version=3)
    with pytest.raises(ValueError, match="crop_size"):
        build_category(tmp_path, "grass", crop_size=300)
    build_category(tmp_path, "grass", **SMALL)
    with pytest.raises(FileExistsError, match="not built with these settings"):
        build_category(tmp_path, "grass", **{**SMALL, "num_train": 7})
    with pytest.raises(ValueError, match="Unknown RgiTextures category"):
        RgiTextures(root=tmp_path, category="wood")


def test_datamodule_builds_and_splits(tmp_path):
    datamodule = RgiTextures(root=tmp_path, category="gravel", **SMALL)
    datamodule.prepare_data()
    datamodule.setup()
    assert len(datamodule.train_data) == 6
    assert len(datamodule.val_data) + len(datamodule.test_data) == 6
    batch = next(iter(datamodule.test_dataloader()))
    assert batch.image.shape[1:] == (3, 32, 32)


def test_split_halves_are_disjoint_and_their_masks_match_their_folders(tmp_path):
    build_category(tmp_path, "gravel", **SMALL)
    halves = {half: textures.split_image_paths(tmp_path, "gravel", half=half) for half in ("validation", "test")}
    assert not set(halves["validation"]) & set(halves["test"])
    assert sorted(halves["validation"] + halves["test"]) == textures.split_image_paths(tmp_path, "gravel")
    images, masks = textures.load_test_split(tmp_path, "gravel", half="test")
    assert len(images) == len(masks) == len(halves["test"])
    defects = [path.parent.name for path in halves["test"]]
    for defect, mask in zip(defects, masks, strict=True):
        assert mask.any() == (defect in DEFECT_TYPES)
    with pytest.raises(ValueError, match="half must be"):
        textures.split_image_paths(tmp_path, "gravel", half="train")


def test_the_split_halves_of_a_version_2_category_are_the_datamodules(tmp_path):
    datamodule = RgiTextures(root=tmp_path, category="fabric", version=2, **SMALL)
    datamodule.prepare_data()
    datamodule.setup()
    halves = {half: textures.split_image_paths(tmp_path / "v2", "fabric", half=half) for half in ("validation", "test")}
    assert {path.resolve() for path in halves["validation"]} == {
        Path(path).resolve() for path in datamodule.val_data.samples.image_path
    }
    assert len(halves["test"]) == len(datamodule.test_data)


# Version 2: faint, soft and coloured defects, beside version 1 unchanged.


def test_version_1_is_the_data_of_every_earlier_figure(tmp_path):
    """A digest of a small version-1 build, made before version 2 existed: version 1 stays byte for byte."""
    import hashlib

    folder = build_category(tmp_path, "grass", crop_size=32, num_train=8, num_test_good=4, num_test_defective=8, seed=3)
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.png")):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    assert digest.hexdigest() == "5f0c9af5b60af4d73d1e76fb89569332441b3bc5e490c73e292d0d12ae6fbcf2"


@pytest.mark.parametrize(("category", "kinds"), [("gravel", 10), ("fabric", 11)])
def test_version_2_has_every_kind_with_twelve_crops_and_exact_masks(tmp_path, category, kinds):
    folder = build_category(tmp_path, category, crop_size=48, num_train=4, num_test_good=4, version=2)
    assert {p.name for p in (folder / "test").iterdir()} == {"good", *textures.defect_types(category, 2)}
    for kind in textures.defect_types(category, 2):
        images = sorted((folder / "test" / kind).glob("*.png"))
        assert len(images) == textures.CROPS_PER_KIND_V2, kind
        for image in images:
            mask = np.array(Image.open(folder / "ground_truth" / kind / f"{image.stem}_mask.png")) > 127
            assert mask.any(), (kind, image.name)
    assert len(textures.defect_types(category, 2)) == kinds
    mode = Image.open(next((folder / "train" / "good").iterdir())).mode
    assert mode == ("RGB" if category == "fabric" else "L")


def test_faint_defects_are_faint_and_change_their_mask_most():
    rng = np.random.default_rng(1)
    crop = textures.load_photograph("gravel")[300:364, :64]
    for kind in ("translucent", "burn", "dent", "smear"):
        for _ in range(5):
            image, mask = textures.add_defect(crop, kind, rng, np.zeros_like(crop))
            change = np.abs(image - crop)
            assert change[mask].mean() > 2 * change[~mask].mean(), kind
            if kind == "dent":
                assert change.max() <= 0.1 + 1e-6  # only the shading changes
            if kind == "smear":
                assert image[mask].mean() == pytest.approx(crop[mask].mean(), abs=0.02)  # the mean is kept


def test_a_hue_shift_alone_is_a_defect():
    import colorsys

    rng = np.random.default_rng(2)
    crop = textures.fabric(64)
    image, mask = textures.add_defect(crop, "hue", rng, np.zeros_like(crop))
    assert np.array_equal(image[~mask], crop[~mask])
    before = np.array([colorsys.rgb_to_hsv(*pixel) for pixel in crop[mask]])
    after = np.array([colorsys.rgb_to_hsv(*pixel) for pixel in image[mask]])
    np.testing.assert_allclose(after[:, 2], before[:, 2], atol=1e-6)  # brightness kept
    turn = np.abs((after[:, 0] - before[:, 0] + 0.5) % 1.0 - 0.5)
    assert np.median(turn[before[:, 1] > 0.2]) > 1 / 7  # hue turned by more than 50 degrees
    with pytest.raises(ValueError, match="colour image"):
        textures.add_defect(crop.mean(axis=2), "hue", rng, np.zeros((64, 64)))


def test_version_2_datamodule_reads_colour_crops_from_its_own_folder(tmp_path):
    small = {"crop_size": 32, "num_train": 8, "num_test_good": 4, "num_test_defective": 22}
    datamodule = RgiTextures(
        root=tmp_path, category="fabric", version=2, **small, train_batch_size=4, eval_batch_size=8
    )
    datamodule.prepare_data()
    datamodule.setup()
    assert (tmp_path / "v2" / "fabric" / "build.json").is_file()
    batch = next(iter(datamodule.test_dataloader()))
    assert batch.image.shape[1:] == (3, 32, 32)
    assert not torch_equal_channels(batch.image)
    with pytest.raises(ValueError, match="version must be one of"):
        RgiTextures(root=tmp_path, version=3)


def torch_equal_channels(images) -> bool:
    return bool((images[:, 0] == images[:, 1]).all() and (images[:, 1] == images[:, 2]).all())
