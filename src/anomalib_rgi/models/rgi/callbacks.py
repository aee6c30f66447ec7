"""Callbacks Rgi adds: a mode-collapse monitor, the choice of the best-validating epoch, the feature parts' preparation.

The first two act at the end of a training epoch, after that epoch's validation and before its
checkpoint is written (Lightning runs checkpoint callbacks last), and keep their state in the
checkpoint, so a resumed fit decides as the uninterrupted one would have.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from lightning.fabric.utilities import move_data_to_device
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DDPStrategy
from torch import nn

from .map_selection import learn_thresholds

if TYPE_CHECKING:
    from .lightning_model import Rgi

logger = logging.getLogger(__name__)


class ModeCollapseError(RuntimeError):
    """The generator's samples stopped varying: the prior would call every image normal or abnormal."""


def is_last_epoch(trainer: Trainer) -> bool:
    """Whether the trainer is in its last training epoch."""
    return trainer.max_epochs is not None and 0 < trainer.max_epochs <= trainer.current_epoch + 1


class CollapseMonitor(Callback):
    """Stop the fit on a LASTING mode collapse, before the collapsed epoch's checkpoint is written.

    Each training step reports :func:`~.networks.sample_diversity` (``sample_diversity`` in its
    output). Healthy GAN training can dip below the threshold for some early epochs and recover (down
    to 0.005, for up to 18 epochs in a row, in our runs), so one low epoch is not a collapse: the fit
    stops after ``patience`` low epochs in a row, or when the last epoch is low, so that the final
    checkpoint is never a collapsed generator.

    Args:
        min_sample_diversity (float): The epoch mean below which an epoch counts as low.
        patience (int): Low epochs in a row that stop the fit.

    """

    def __init__(self, min_sample_diversity: float, patience: int) -> None:
        self.min_sample_diversity = min_sample_diversity
        self.patience = patience
        self.low_epochs = 0
        self._sum: torch.Tensor | float = 0.0  # a tensor once summed: no host sync per step
        self._count = 0

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: object,
        batch: object,
        batch_idx: int,
    ) -> None:
        """Add the step's sample diversity to the epoch's."""
        del trainer, pl_module, batch, batch_idx
        if isinstance(outputs, dict) and "sample_diversity" in outputs:
            self._sum = self._sum + outputs["sample_diversity"]
            self._count += 1

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Log the epoch's diversity; raise :class:`ModeCollapseError` on a lasting collapse."""
        if self._count == 0:
            return
        local = torch.as_tensor(self._sum / self._count, device=pl_module.device)
        self._sum, self._count = 0.0, 0
        # Every DDP process must take the same decision, or the others wait for it forever.
        diversity = float(trainer.strategy.reduce(local, reduce_op="mean"))
        pl_module.log("train_sample_diversity", diversity)
        self.low_epochs = self.low_epochs + 1 if diversity < self.min_sample_diversity else 0
        last = is_last_epoch(trainer)
        if self.low_epochs < self.patience and not (self.low_epochs and last):
            return
        epoch = trainer.current_epoch
        on_disk = f"the one on disk is from epoch {epoch - 1}" if epoch else "none is"
        if self.low_epochs > 1:
            on_disk += ", already below it: retrain rather than use it"
        msg = (
            f"GAN training collapsed at epoch {epoch}: generated samples vary {diversity:.3f} times as much as "
            f"the training images, below min_sample_diversity={self.min_sample_diversity} for {self.low_epochs} "
            f"epoch(s) in a row{' up to the last epoch' if last else ''}. The prior would restore every image to "
            f"nearly the same picture, so this epoch's checkpoint was not written; {on_disk}. Lower the prior's "
            "`lr`, raise its `adversarial_weight` or check that the training images are not all alike."
        )
        raise ModeCollapseError(msg)

    def state_dict(self) -> dict[str, Any]:
        """Return the count of low epochs so far."""
        return {"low_epochs": self.low_epochs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue counting where the interrupted fit stopped."""
        self.low_epochs = state_dict.get("low_epochs", 0)


class EpochSelection(Callback):
    """Keep the epoch whose validation Dice (``val_pixel_F1Max``) is highest, weights and thresholds together.

    Validation runs every ``every`` epochs (``Rgi.trainer_arguments``). After the last epoch the module
    goes back to the best one's state (weights, learned thresholds and map settings), so the final
    checkpoint, the test that follows and any export use it.

    Args:
        every (int): Validation interval in epochs.

    """

    def __init__(self, every: int) -> None:
        self.every = every
        self.best: dict[str, Any] | None = None  # {"epoch", "score", "state"}; the map's settings are in the state

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Rgi) -> None:
        """Remember a better-validating epoch; after the last, return to the best."""
        if (trainer.current_epoch + 1) % self.every:
            return
        score = pl_module.validation_dice(required_by=f"select_epoch_every={self.every}")
        epoch = trainer.current_epoch
        if self.best is None or score > self.best["score"]:
            self.best = {
                "epoch": epoch,
                "score": score,
                "state": {name: value.detach().cpu().clone() for name, value in pl_module.state_dict().items()},
            }
        logger.info(
            "Rgi: epoch %d validates at val_pixel_F1Max %.3f (best so far: epoch %d, %.3f).",
            epoch,
            score,
            self.best["epoch"],
            self.best["score"],
        )
        if not is_last_epoch(trainer):
            return
        best, self.best = self.best, None  # the final checkpoint IS the best epoch; no second copy in it
        if best["epoch"] != epoch:
            logger.info("Rgi: keeping epoch %d (%.3f) instead of the last (%.3f).", best["epoch"], best["score"], score)
            pl_module.load_state_dict(best["state"])  # the map's settings are in its state
        pl_module.log("selected_epoch", float(best["epoch"]))
        pl_module.record_kept_validation(best["epoch"], best["score"])

    def state_dict(self) -> dict[str, Any]:
        """Return the best epoch so far: a resumed fit can still go back to an epoch before the interruption."""
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the best epoch of the interrupted fit."""
        self.best = state_dict.get("best")


class FeaturePartsPreparation(Callback):
    """Fit and calibrate the parts a map adds to the mask on the attached training images when they need it.

    A fit fits the feature prior when it starts. Scoring a prior with a map it was fitted without
    (``anomalib test --model.anomaly_map mask+feature_prior --ckpt_path <prior>``) fits and calibrates
    the new part first (parts calibrated already keep their scales), then learns the thresholds again
    on the validation images, as ``validate`` would: the checkpoint's were learned for another map.
    Scoring with another weight, or with the mask alone, learns them again too.

    Args:
        feature_prior_tiles (int): Training tiles the feature prior is fitted on, at most.

    """

    def __init__(self, feature_prior_tiles: int = 512) -> None:
        self.feature_prior_tiles = feature_prior_tiles

    def on_train_start(self, trainer: Trainer, pl_module: Rgi) -> None:
        """Fit the feature prior unless the prior already has it (a resumed fit).

        Only the fit: the scales are calibrated after every epoch, on the prior of that epoch.
        """
        prior = pl_module.model.anomaly_map.feature_prior
        if prior is None or prior.fitted or (images := self._prior_images(trainer, pl_module)) is None:
            return
        pl_module.model.fit_feature_prior(images)
        logger.info("Rgi: feature prior fitted on %d training images.", len(images))

    def on_validation_start(self, trainer: Trainer, pl_module: Rgi) -> None:
        """Prepare the parts; this validation then learns the thresholds for them."""
        self._prepare(trainer, pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: Rgi) -> None:
        """Prepare the parts; learn the thresholds again if the map is not the one they were learned for."""
        self._prepare_and_relearn(trainer, pl_module)

    def on_predict_start(self, trainer: Trainer, pl_module: Rgi) -> None:
        """Prepare the parts; learn the thresholds again if the map is not the one they were learned for."""
        self._prepare_and_relearn(trainer, pl_module)

    def _prepare_and_relearn(self, trainer: Trainer, pl_module: Rgi) -> None:
        if self._prepare(trainer, pl_module) or pl_module.thresholds_stale:
            self._relearn_thresholds(trainer, pl_module)
            pl_module.thresholds_stale = False

    @staticmethod
    def _training_images(trainer: Trainer, pl_module: Rgi, limit: int) -> torch.Tensor | None:
        """Return the first ``limit`` images of the attached training set, resized as the model reads them."""
        train_data = getattr(getattr(trainer, "datamodule", None), "train_data", None)
        if not train_data:
            return None
        resize = pl_module.pre_processor if isinstance(pl_module.pre_processor, PreProcessor) else nn.Identity()
        count = min(limit, len(train_data))
        return torch.cat([resize(train_data[index].image[None]) for index in range(count)]).to(pl_module.device)

    def _prior_images(self, trainer: Trainer, pl_module: Rgi) -> torch.Tensor | None:
        """Return the training images the feature prior is fitted on (at most ``feature_prior_tiles`` tiles)."""
        limit = max(1, self.feature_prior_tiles // pl_module.model.tiles_per_side**2)
        return self._training_images(trainer, pl_module, limit)

    def _prepare(self, trainer: Trainer, pl_module: Rgi) -> bool:
        """Whether a part was prepared now (the checkpoint's thresholds then predate it)."""
        if not pl_module.model.unprepared_parts:
            return False
        if (images := self._prior_images(trainer, pl_module)) is None:
            return False
        weighed = pl_module.model.prepare_feature_parts(images)
        logger.info("Rgi: the map's added parts fitted and calibrated on %d training images.", len(images))
        return weighed

    @staticmethod
    def _relearn_thresholds(trainer: Trainer, pl_module: Rgi) -> None:
        """Learn the thresholds again on the validation images, as ``validate`` would.

        Raises:
            RuntimeError: If the datamodule has no validation images to learn them on.

        """
        post_processor = pl_module.post_processor
        if not isinstance(post_processor, PostProcessor):
            return
        learned = post_processor.pixel_threshold.clone()
        datamodule = trainer.datamodule
        if not getattr(datamodule, "val_data", None):
            if torch.isnan(learned):
                return
            msg = (
                "Rgi: this prior's thresholds were learned with another anomaly map, and the datamodule has no "
                "validation images to learn them again: give the datamodule validation images (val_split_mode), "
                "or score with the map the prior was fitted with."
            )
            raise RuntimeError(msg)

        def scored() -> Iterator[object]:
            for index, loaded in enumerate(datamodule.val_dataloader()):
                batch = move_data_to_device(loaded, pl_module.device)
                if isinstance(pl_module.pre_processor, PreProcessor):
                    pl_module.pre_processor.on_validation_batch_start(trainer, pl_module, batch, index)
                yield pl_module.test_step(batch, index)

        learn_thresholds(post_processor, trainer, pl_module, scored())
        logger.info(
            "Rgi: thresholds learned again on %d validation images (pixel %.4g -> %.4g).",
            len(datamodule.val_data),
            learned,
            post_processor.pixel_threshold,
        )


class DistributedFit(Callback):
    """Let Lightning's DDP train the GAN, all processes writing into one run folder.

    Each training step runs two backward passes (critic, then generator + encoder) that each reach
    only part of the weights; DDP's default reducer expects every weight in every backward pass and
    stops with "parameters that were not used". And anomalib's Engine creates a new version folder
    (``v0``, ``v1``, ...) in EVERY process before the processes connect: process 1 would put its
    pictures into a folder of its own and point ``latest`` at it, a folder without the weights.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Ask DDP for unused parameters (before it wraps the model) and share process 0's run folder."""
        del pl_module, stage
        strategy = trainer.strategy
        if isinstance(strategy, DDPStrategy) and not strategy._ddp_kwargs.get("find_unused_parameters"):
            logger.info("Rgi: enabling DDP's find_unused_parameters (two partial backward passes per step).")
            strategy._ddp_kwargs["find_unused_parameters"] = True
        if trainer.world_size == 1:
            return
        own = Path(trainer.default_root_dir)
        shared = Path(strategy.broadcast(str(own)))
        if shared == own:
            return
        trainer._default_root_dir = str(shared)
        if own.is_dir() and not any(own.iterdir()):
            own.rmdir()
        latest = own.parent / "latest"
        if latest.is_symlink() and not latest.exists():
            # Replace the dangling link atomically: other processes may be doing the same.
            temporary = own.parent / f".latest-{os.getpid()}"
            temporary.symlink_to(shared, target_is_directory=True)
            temporary.replace(latest)


class ResumableRandomState(Callback):
    """Keep every process's random stream in the checkpoint, so a resumed fit continues the same stream.

    The latents, the encoder's corruptions and the shuffling of the training images all draw from
    torch's global generator; Lightning restores weights, optimisers and loop counters but not it.
    Lightning restores before it draws the first epoch's shuffle, so the resumed fit repeats the
    interrupted run exactly. Each DDP process gets a stream of its own when the fit starts.
    """

    def __init__(self) -> None:
        self.resumed = False

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Give each DDP process its own random stream (unless resumed with them)."""
        if trainer.world_size > 1 and not self.resumed:
            torch.manual_seed(torch.initial_seed() + pl_module.global_rank)

    @staticmethod
    def _gather(pl_module: LightningModule, state: torch.Tensor) -> torch.Tensor:
        """``(world_size, ...)`` states of all processes (every process calls this when saving)."""
        gathered = pl_module.all_gather(state.to(pl_module.device)).cpu()
        return gathered if pl_module.trainer.world_size > 1 else gathered[None]

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Store the random states of all processes."""
        del trainer
        checkpoint["rgi_rng_states"] = self._gather(pl_module, torch.get_rng_state())
        if pl_module.device.type == "cuda":
            checkpoint["rgi_cuda_rng_states"] = self._gather(pl_module, torch.cuda.get_rng_state(pl_module.device))

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Restore this process's random state when resuming a fit (Lightning calls this only then)."""
        del pl_module
        if "rgi_rng_states" not in checkpoint:
            return
        states, rank = checkpoint["rgi_rng_states"], trainer.global_rank
        if len(states) != trainer.world_size:
            logger.warning(
                "Rgi: the checkpoint holds random states of %d processes, this run has %d: the resumed "
                "fit is valid but will not repeat the interrupted run exactly.",
                len(states),
                trainer.world_size,
            )
            return
        torch.set_rng_state(states[rank])
        if "rgi_cuda_rng_states" in checkpoint and torch.cuda.is_available():
            torch.cuda.set_rng_state(checkpoint["rgi_cuda_rng_states"][rank], trainer.strategy.root_device)
        self.resumed = True
