"""Mask-free inpainting API, the rgi-restore command and the corruption generators."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from anomalib.engine import Engine

from anomalib_rgi import Rgi, RgiTextures
from anomalib_rgi.inpainting import (
    RESTORATION_SETTINGS,
    central_block,
    fill_noise,
    fill_patch,
    irregular_strokes,
    random_pixels,
    restore,
)

from .conftest import TINY_DATA, TINY_MODEL

RESTORE = Path(sys.executable).with_name("rgi-restore")


@pytest.fixture(scope="module")
def trained(tiny_data_root, tmp_path_factory):
    torch.manual_seed(0)
    work = tmp_path_factory.mktemp("inpaint")
    engine = Engine(default_root_dir=work, logger=False, accelerator="cpu", devices=1, max_epochs=1)
    model = Rgi(**TINY_MODEL)
    engine.fit(model=model, datamodule=RgiTextures(root=tiny_data_root, category="grass", **TINY_DATA))
    return model, Path(engine.trainer.checkpoint_callback.best_model_path)


def test_restore_tensors_and_files_for_rgi_and_rrgi(trained, tiny_data_root):
    model, _ = trained
    files = sorted((tiny_data_root / "grass" / "test" / "hole").glob("*.png"))
    result = restore(model, files)
    assert result.restored.shape == (len(files), 3, 32, 32)
    assert result.masks.shape == (len(files), 1, 32, 32)
    assert result.losses.shape == (len(files),)
    assert result.restored.min() >= 0
    assert result.restored.max() <= 1
    relaxed = restore(model, torch.rand(2, 3, 32, 32), finetune_steps=2)
    assert relaxed.restored.shape == (2, 3, 32, 32)
    assert model.model.inversion["finetune_steps"] == 0


def test_restore_uses_the_closed_form_mask_unless_told_otherwise(trained):
    model, _ = trained
    images = torch.rand(2, 3, 32, 32)
    scoring_settings = dict(model.model.inversion)
    assert scoring_settings["mask_solver"] != RESTORATION_SETTINGS["mask_solver"]
    default = restore(model, images)
    expected = model.model.invert(images, **RESTORATION_SETTINGS)
    torch.testing.assert_close(default.restored, ((expected.restored + 1) / 2).clamp(0, 1))
    torch.testing.assert_close(default.masks, expected.mask.abs().mean(dim=1, keepdim=True))
    scoring = restore(model, images, mask_solver=scoring_settings["mask_solver"], lam=scoring_settings["lam"])
    torch.testing.assert_close(scoring.masks, model.model.invert(images).mask.abs().mean(dim=1, keepdim=True))
    assert not torch.allclose(scoring.masks, default.masks)
    assert model.model.inversion == scoring_settings
    with pytest.raises(ValueError, match=r"Unknown inversion settings \['lamda'\]"):
        restore(model, images, lamda=0.1)


def test_restore_refuses_bad_input(trained, tmp_path):
    model, _ = trained
    with pytest.raises(ValueError, match="scores images of shape"):
        restore(model, torch.rand(1, 3, 40, 40))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nope")
    with pytest.raises(ValueError, match=r"broken\.png"):
        restore(model, [broken])
    with pytest.raises(ValueError, match="never fitted"):
        restore(Rgi(**TINY_MODEL), torch.rand(1, 3, 32, 32))


def test_restore_command_writes_results_and_never_overwrites(trained, tiny_data_root, tmp_path):
    _, checkpoint = trained
    images = tiny_data_root / "grass" / "test" / "scratch"
    out = tmp_path / "out"
    first = subprocess.run(
        [str(RESTORE), str(checkpoint), str(images), str(out)], capture_output=True, text=True, check=False
    )
    assert first.returncode == 0, first.stderr[-2000:]
    count = len(list(images.glob("*.png")))
    for folder in ("restored", "masks", "side_by_side"):
        assert len(list((out / folder).glob("*.png"))) == count
    again = subprocess.run(
        [str(RESTORE), str(checkpoint), str(images), str(out)], capture_output=True, text=True, check=False
    )
    assert again.returncode == 2
    assert "already holds results" in again.stderr
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"model.memory_bank": torch.zeros(1)}}, other)
    wrong = subprocess.run(
        [str(RESTORE), str(other), str(images), str(tmp_path / "o2")], capture_output=True, text=True, check=False
    )
    assert wrong.returncode == 2
    assert "not written by Rgi" in wrong.stderr
    authors = subprocess.run(
        [str(RESTORE), str(checkpoint), str(images), str(tmp_path / "adam"), "--mask-solver", "adam", "--steps", "2"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert authors.returncode == 0, authors.stderr[-2000:]
    assert len(list((tmp_path / "adam" / "masks").glob("*.png"))) == count
    negative = subprocess.run(
        [str(RESTORE), str(checkpoint), str(images), str(tmp_path / "o3"), "--lam", "-1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert negative.returncode == 2
    assert "lam must be positive" in negative.stderr


def test_corruption_masks_have_the_requested_area():
    assert central_block(64, 0.25).float().mean().item() == pytest.approx(0.25, abs=0.01)
    generator = torch.Generator().manual_seed(0)
    assert random_pixels(128, 0.5, generator).float().mean().item() == pytest.approx(0.5, abs=0.02)
    strokes = irregular_strokes(64, generator=generator)
    assert 0.02 < strokes.float().mean().item() < 0.6


def test_fills_change_only_masked_pixels_with_the_papers_values():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 64)
    mask = central_block(64, 0.25)
    noisy = fill_noise(images, mask, generator)
    assert torch.equal(noisy[..., ~mask], images[..., ~mask])
    # -1 + N(0, 1) in [-1, 1] units is N(0, 1) / 2 in [0, 1] units: mean 0, std 0.5
    assert noisy[..., mask].mean().item() == pytest.approx(0.0, abs=0.05)
    assert noisy[..., mask].std().item() == pytest.approx(0.5, abs=0.05)
    patched = fill_patch(images, mask, generator)
    assert torch.equal(patched[..., ~mask], images[..., ~mask])
    assert not torch.equal(patched[..., mask], images[..., mask])
    assert patched.min() >= 0
    assert patched.max() <= 1
