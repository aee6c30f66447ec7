"""Unattended operation: several processes, interrupted fits, checkpoints, mode collapse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from anomalib_rgi import Rgi, RgiTextures
from anomalib_rgi.models.rgi import ModeCollapseError
from anomalib_rgi.models.rgi.networks import sample_diversity

from .conftest import TINY_DATA, TINY_PRIOR, fit_tiny

JOB = Path(__file__).with_name("ddp_job.py")


def _run_job(*args: str | Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(JOB), *map(str, args)]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.slow
def test_ddp_scores_every_test_image_once_and_matches_one_process(tmp_path):
    """Two gloo processes: synchronised training, each test image scored once, same metrics as one process.

    Tolerance: the metrics of the DDP-trained checkpoint tested by 2 processes and by 1 process agree
    to 1e-6 (only the order of pooling differs). A DDP fit is not expected to equal a one-process
    fit: the batch is split over processes and each draws its own latents.
    """
    from anomalib_rgi.data import build_category

    data = tmp_path / "data"
    # 9 test crops, half for validation: an odd count on 2 processes, which a padding sampler repeats.
    build_category(data, "grass", crop_size=32, num_train=16, num_test_good=5, num_test_defective=4, seed=0)
    _run_job(data, tmp_path / "ddp", "--devices", "2")

    per_rank = [json.loads((tmp_path / "ddp" / f"scored-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(per_rank)
    scored = [path for paths in per_rank for path in paths]
    assert len(scored) == len(set(scored)), "an image was scored twice"
    datamodule = RgiTextures(root=data, category="grass", **{**TINY_DATA, "num_test_good": 5})
    datamodule.setup()
    assert sorted(scored) == sorted(map(str, datamodule.test_data.samples.image_path))
    # 16 images, 4 per process and step, 2 processes, 2 epochs: the processes stepped together.
    assert (tmp_path / "ddp" / "trained_steps.txt").read_text() == "4"

    # One run folder, which `latest` points at, holding the weights and every process's pictures.
    runs = tmp_path / "ddp" / "run" / "Rgi" / "RgiTextures" / "grass"
    assert sorted(path.name for path in runs.iterdir()) == ["latest", "v0"]
    assert (runs / "latest").resolve() == (runs / "v0").resolve()
    (checkpoint,) = (tmp_path / "ddp").rglob("*.ckpt")
    assert checkpoint.is_relative_to(runs / "v0")
    assert len(list((runs / "v0" / "images").rglob("*.png"))) == len(scored)
    _run_job(data, tmp_path / "one", "--devices", "1", "--ckpt", checkpoint)
    ddp_metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    one_metrics = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert ddp_metrics.keys() == one_metrics.keys()
    for name, value in ddp_metrics.items():
        assert value == pytest.approx(one_metrics[name], abs=1e-6), name


class SimulatedKillError(RuntimeError):
    """Stands for the process being killed."""


class KillAt(Callback):
    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        del pl_module, batch
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise SimulatedKillError


def _fit(root: Path, work: Path, **options: object) -> Rgi:
    """Three epochs (two checkpoints and a resume point), the tiny prior otherwise."""
    return fit_tiny(root, work, **{"max_epochs": 3, **options})[1]


def test_fit_killed_mid_epoch_resumes_to_the_same_weights(tiny_data_root, tmp_path):
    uninterrupted = _fit(tiny_data_root, tmp_path / "uninterrupted")

    with pytest.raises(SimulatedKillError):
        _fit(tiny_data_root, tmp_path / "run", callbacks=[KillAt(epoch=1, batch=1)])
    (checkpoint,) = (tmp_path / "run").rglob("*.ckpt")
    assert torch.load(checkpoint, weights_only=False)["epoch"] == 0
    before = checkpoint.read_bytes()

    resumed = _fit(tiny_data_root, tmp_path / "run", ckpt_path=checkpoint)
    assert int(resumed.model.trained_steps) == int(uninterrupted.model.trained_steps) == 6
    expected = uninterrupted.state_dict()
    differing = [name for name, value in resumed.state_dict().items() if not torch.equal(value, expected[name])]
    assert not differing, [n for n in differing if not n.startswith("post_processor")]
    # The resumed run wrote a new version folder; the interrupted run's checkpoint is untouched.
    assert checkpoint.read_bytes() == before
    assert len(list((tmp_path / "run").rglob("*.ckpt"))) == 2


def test_fit_writes_one_checkpoint_per_run(tiny_data_root, tmp_path):
    _fit(tiny_data_root, tmp_path, max_epochs=2)
    assert [path.name for path in tmp_path.rglob("*.ckpt")] == ["model.ckpt"]


def test_interrupted_checkpoint_write_keeps_the_previous_file(tiny_data_root, tmp_path, monkeypatch):
    """A kill while a checkpoint is written leaves the previous checkpoint whole (write to a temp, then rename)."""
    from fsspec.implementations.local import LocalFileOpener

    model = _fit(tiny_data_root, tmp_path, max_epochs=1)
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    before = checkpoint.read_bytes()

    write = LocalFileOpener.write

    def killed_halfway(self: LocalFileOpener, data: bytes) -> int:
        write(self, data[: len(data) // 2])
        raise SimulatedKillError

    monkeypatch.setattr(LocalFileOpener, "write", killed_halfway)
    with pytest.raises(SimulatedKillError):
        model.trainer.save_checkpoint(checkpoint)
    monkeypatch.undo()
    assert checkpoint.read_bytes() == before
    assert Rgi.load_from_checkpoint(checkpoint) is not None


def test_sample_diversity_separates_healthy_and_collapsed_generators():
    real = torch.rand(16, 3, 8, 8) * 2 - 1
    assert sample_diversity(torch.rand(16, 3, 8, 8) * 2 - 1, real) == pytest.approx(1.0, abs=0.2)
    collapsed = real[:1].repeat(16, 1, 1, 1) + 0.001 * torch.randn(16, 3, 8, 8)
    assert sample_diversity(collapsed, real) < 0.01


@pytest.mark.parametrize(
    ("collapsed_epochs", "max_epochs", "patience", "stopped_at"),
    [
        ({1, 2, 3}, 4, 2, 2),  # lasting: stops after `patience` low epochs in a row
        ({1}, 3, 2, None),  # a dip that recovers (healthy GANs do this early on): trains to the end
        ({2}, 3, 10, 2),  # a low LAST epoch stops at once: the final checkpoint is never collapsed
    ],
)
def test_mode_collapse_stops_training_before_the_checkpoint(
    tiny_data_root, tmp_path, monkeypatch, collapsed_epochs, max_epochs, patience, stopped_at
):
    from anomalib_rgi.models.rgi.networks import Generator

    forward = Generator.forward

    def collapse_in_chosen_epochs(self: Generator, latent: torch.Tensor) -> torch.Tensor:
        output = forward(self, latent)
        if CollapseSwitch.on:
            return output[:1].expand_as(output) * 1.0
        return output

    class CollapseSwitch(Callback):
        on = False

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            del pl_module
            CollapseSwitch.on = trainer.current_epoch in collapsed_epochs

    monkeypatch.setattr(Generator, "forward", collapse_in_chosen_epochs)
    prior = {**TINY_PRIOR, "collapse_patience": patience}
    options = {"callbacks": [CollapseSwitch()], "max_epochs": max_epochs, "prior": prior}
    if stopped_at is None:
        _fit(tiny_data_root, tmp_path, **options)
        (checkpoint,) = tmp_path.rglob("*.ckpt")
        assert torch.load(checkpoint, weights_only=False)["epoch"] == max_epochs - 1
        return
    with pytest.raises(ModeCollapseError, match=f"collapsed at epoch {stopped_at}") as stopped:
        _fit(tiny_data_root, tmp_path, **options)
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    saved = torch.load(checkpoint, weights_only=False)
    # The message says whether the checkpoint left on disk is itself from the low stretch.
    low_epochs = saved["callbacks"]["CollapseMonitor"]["low_epochs"]
    assert ("already below it" in str(stopped.value)) == (low_epochs > 0)
    assert saved["epoch"] == stopped_at - 1
    if low_epochs:
        # A fit resumed from inside the low stretch keeps counting it instead of starting again.
        with pytest.raises(ModeCollapseError, match=f"collapsed at epoch {stopped_at}"):
            _fit(tiny_data_root, tmp_path, ckpt_path=checkpoint, **options)


def test_collapse_patience_must_be_positive():
    with pytest.raises(ValueError, match="collapse_patience must be at least 1"):
        Rgi(prior={"collapse_patience": 0})
