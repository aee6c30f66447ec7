"""Rgi(select_epoch_every=N): the prior is the epoch that validates best, weights and thresholds together."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback

from anomalib_rgi import Rgi

from .conftest import fit_tiny
from .test_reliability import KillAt, SimulatedKillError


class Snapshots(Callback):
    """The model's state at each epoch end, before Rgi's own epoch-end hook (plain callbacks run first)."""

    def __init__(self) -> None:
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        del trainer
        self.states[pl_module.current_epoch] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def _same(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> bool:
    # NaN where nothing was learned yet (thresholds before the first validation) counts as equal.
    return all(torch.allclose(value, expected[name], rtol=0, atol=0, equal_nan=True) for name, value in state.items())


def _script_scores(monkeypatch: pytest.MonkeyPatch, scores: dict[int, float]) -> None:
    monkeypatch.setattr(Rgi, "validation_dice", lambda self, required_by: scores[self.current_epoch])  # noqa: ARG005


@pytest.mark.parametrize(("scores", "kept"), [({1: 0.9, 3: 0.1}, 1), ({1: 0.1, 3: 0.9}, 3)])
def test_the_best_validated_epoch_is_kept_in_memory_and_on_disk(tiny_data_root, tmp_path, monkeypatch, scores, kept):
    _script_scores(monkeypatch, scores)
    snapshots = Snapshots()
    engine, model, _ = fit_tiny(tiny_data_root, tmp_path, callbacks=[snapshots], max_epochs=4, select_epoch_every=2)

    assert _same(model.state_dict(), snapshots.states[kept])
    assert not _same(snapshots.states[1], snapshots.states[3])  # the test can tell the epochs apart
    # The thresholds are the ones learned from the kept epoch's validation, not NaN or the last epoch's.
    assert torch.isfinite(model.post_processor._pixel_threshold)
    assert float(engine.trainer.callback_metrics["selected_epoch"]) == kept
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    saved = torch.load(checkpoint, weights_only=False)
    assert _same(saved["state_dict"], snapshots.states[kept])
    assert saved["callbacks"]["EpochSelection"] == {"best": None}  # no second copy of the weights in the final file
    assert Rgi.kept_validation(checkpoint) == {
        "epoch": kept,
        "val_pixel_F1Max": scores[kept],
        "anomaly_map": "mask",
        "feature_weight": 0.0,
        "mask_floor": 0.0,
        "described": "mask",
    }


def test_validation_dice_chooses_the_epoch(tiny_data_root, tmp_path):
    engine, _, _ = fit_tiny(tiny_data_root, tmp_path, max_epochs=2, select_epoch_every=1)
    assert 0 < float(engine.trainer.callback_metrics["val_pixel_F1Max"]) <= 1
    assert float(engine.trainer.callback_metrics["selected_epoch"]) in {0.0, 1.0}


def test_without_selection_the_checkpoint_records_the_last_epochs_validation(tiny_data_root, tmp_path):
    engine, _, _ = fit_tiny(tiny_data_root, tmp_path, max_epochs=2)
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    kept = Rgi.kept_validation(checkpoint)
    assert kept == {
        "epoch": 1,
        "val_pixel_F1Max": pytest.approx(float(engine.trainer.callback_metrics["val_pixel_F1Max"])),
        "anomaly_map": "mask",
        "feature_weight": 0.0,
        "mask_floor": 0.0,
        "described": "mask",
    }
    assert 0 < kept["val_pixel_F1Max"] <= 1


def test_a_resumed_fit_can_go_back_to_an_epoch_before_the_interruption(tiny_data_root, tmp_path, monkeypatch):
    _script_scores(monkeypatch, {0: 0.9, 1: 0.2, 2: 0.3, 3: 0.4})
    snapshots = Snapshots()
    options = {"max_epochs": 4, "select_epoch_every": 1}
    with pytest.raises(SimulatedKillError):
        fit_tiny(tiny_data_root, tmp_path, callbacks=[snapshots, KillAt(epoch=2, batch=1)], **options)
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    assert torch.load(checkpoint, weights_only=False)["callbacks"]["EpochSelection"]["best"]["epoch"] == 0

    _, resumed, _ = fit_tiny(tiny_data_root, tmp_path, ckpt_path=checkpoint, **options)
    assert _same(resumed.state_dict(), snapshots.states[0])


@pytest.mark.parametrize("every", [-1, 3])
def test_select_epoch_every_must_divide_max_epochs(every):
    with pytest.raises(ValueError, match="select_epoch_every must be 0"):
        Rgi(max_epochs=4, select_epoch_every=every)


def test_selection_without_defect_masks_in_validation_says_so(tiny_data_root, tmp_path):
    """A folder data set without masks: the validation Dice is undefined, and the run says what to do."""
    from anomalib.data import Folder
    from anomalib.engine import Engine

    from .conftest import TINY_MODEL

    category = tiny_data_root / "grass"
    defects = sorted(path.name for path in (category / "test").iterdir() if path.name != "good")
    datamodule = Folder(
        name="no-masks",
        root=category,
        normal_dir="train/good",
        abnormal_dir=[f"test/{defect}" for defect in defects],
        normal_test_dir="test/good",
        train_batch_size=8,
        eval_batch_size=8,
        num_workers=0,
    )
    engine = Engine(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1)
    advice = r"select_epoch_every=1 chooses by validation Dice.*no defects with masks.*select_epoch_every 0"
    advice += ".*FalseAlarmPostProcessor"
    with pytest.raises(ValueError, match=advice):
        engine.fit(Rgi(**{**TINY_MODEL, "select_epoch_every": 1}), datamodule=datamodule)


def test_selection_does_not_depend_on_the_evaluators_metrics(tiny_data_root, tmp_path):
    """A custom evaluator without a validation F1Max: the model measures its own validation Dice."""
    from anomalib.metrics import AUROC, Evaluator

    evaluator = Evaluator(test_metrics=[AUROC(fields=["pred_score", "gt_label"], prefix="image_")])
    engine, _, _ = fit_tiny(tiny_data_root, tmp_path, max_epochs=2, select_epoch_every=1, evaluator=evaluator)
    assert "val_pixel_F1Max" not in engine.trainer.callback_metrics
    assert float(engine.trainer.callback_metrics["selected_epoch"]) in {0.0, 1.0}
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    assert 0 < Rgi.kept_validation(checkpoint)["val_pixel_F1Max"] <= 1
