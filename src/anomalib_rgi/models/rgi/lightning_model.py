"""RGI / R-RGI as an anomalib model.

``fit`` trains the GAN prior (generator, encoder, critic) on the normal training images with
Lightning's manual optimisation; validation, test and predict score images by robust GAN inversion,
and the absolute sparse mask ``|M|`` becomes the pixel anomaly map. R-RGI is the same model with
``finetune_steps > 0``.

Example:
    >>> from anomalib.engine import Engine
    >>> from anomalib_rgi import Rgi
    >>> from anomalib_rgi.data import RgiTextures
    >>> engine = Engine()
    >>> engine.train(Rgi(), datamodule=RgiTextures(category="grass"))  # doctest: +SKIP

"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from anomalib import LearningType
from anomalib.callbacks import ModelCheckpoint
from anomalib.data import AnomalibDataModule, Batch
from anomalib.deploy import CompressionType, ExportType
from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Max, F1Score
from anomalib.models.components import AnomalibModule
from anomalib.models.components.base.export_mixin.utils import create_export_root
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.utils.serialization import anomalib_safe_globals
from anomalib.visualization import Visualizer
from lightning.fabric.utilities import move_data_to_device
from lightning.pytorch import Callback
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import STEP_OUTPUT
from lightning_utilities.core.imports import module_available
from torch import nn
from torchmetrics import Metric
from torchvision.transforms.v2 import Resize

from anomalib_rgi.metrics import Dice, FalseAlarmRate, PerImageBestDice, QuantizationMetric
from anomalib_rgi.visualization import RgiVisualizer

from .export import keep_only_output_names, trace_unrolled
from .inversion import InversionResult
from .loss import CriticLoss, GeneratorLoss, corrupt
from .torch_model import RgiModel

logger = logging.getLogger(__name__)


ARCHITECTURE_KEYS = ("image_size", "latent_stride", "latent_channels", "base_channels")
FEATURE_MAP_STATE = ("model.feature_distance.", "model.feature_prior.", "model.feature_scale")
FEATURE_PRIOR_TILES = 512  # training tiles the feature prior is fitted on, at most (memory: 0.6 MB each)


class PriorDivergedError(RuntimeError):
    """The GAN prior's training produced a non-finite loss."""


class ModeCollapseError(RuntimeError):
    """The generator's samples stopped varying: the prior would call every image normal or abnormal."""


def sample_diversity(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Spread of generated images across a batch relative to the real images' spread.

    The per-pixel standard deviation over the batch, averaged over pixels, of ``fake`` divided by
    that of ``real``: about 1 for a healthy generator, near 0 when every latent gives the same image
    (mode collapse), which no per-image loss shows.

    Args:
        fake (torch.Tensor): Generated images ``(N, C, H, W)``, ``N >= 2``.
        real (torch.Tensor): Training images ``(M, C, H, W)``, ``M >= 2``.

    Returns:
        torch.Tensor: The ratio (a scalar).

    """
    return fake.std(dim=0).mean() / real.std(dim=0).mean().clamp_min(1e-8)


def check_rgi_checkpoint(checkpoint: dict[str, Any], expected: dict[str, Any] | None = None) -> None:
    """Refuse a checkpoint that is not an Rgi one, or whose networks differ from ``expected``.

    Args:
        checkpoint (dict[str, Any]): A loaded Lightning checkpoint.
        expected (dict[str, Any] | None): Hyperparameters of the model that will receive it.

    Raises:
        ValueError: With what the checkpoint is and what to do instead.

    """
    state = checkpoint.get("state_dict", {})
    if not any(key.startswith("model.generator.") for key in state):
        saved_by = checkpoint.get("hyper_parameters", {}).get("_class_path") or "another model"
        msg = (
            f"This checkpoint was not written by Rgi (it holds no generator weights; saved by {saved_by}). "
            "Use the checkpoint of an Rgi run, e.g. results/Rgi/<data>/<category>/latest/weights/lightning/model.ckpt."
        )
        raise ValueError(msg)
    saved = checkpoint.get("hyper_parameters", {})
    if expected is not None:
        differing = {key: saved[key] for key in ARCHITECTURE_KEYS if key in saved and saved[key] != expected.get(key)}
        if differing:
            given = {key: expected.get(key) for key in differing}
            msg = (
                f"The checkpoint's networks were built with {differing}, this model with {given}. "
                "Build the model with the checkpoint's settings (e.g. pass the run's config.yaml)."
            )
            raise ValueError(msg)


class Rgi(AnomalibModule):
    """Robust GAN inversion (RGI, ICLR 2023) for unsupervised pixel-wise anomaly detection.

    Args:
        image_size (int): Side of the square images the prior is trained on and inverts (inputs are
            resized to it, or to ``input_size``).
        latent_stride (int): Downsampling factor of the generator's spatial latent.
        latent_channels (int): Channels of the spatial latent.
        base_channels (int): Width of the networks at full resolution.
        max_epochs (int): Epochs of GAN training.
        lr (float): Adam learning rate of the GAN training.
        adversarial_weight (float): Weight of the adversarial term for generator and encoder.
        reconstruction_weight (float): Weight of the encoder reconstruction term.
        lam (float): Mask sparsity ``lambda`` in [-1, 1] pixel units: ``M`` is non-zero where the
            squared residual exceeds ``lam / 2``. The authors use 0.4 for their PGGAN; our sharper
            prior leaves smaller residuals on normal pixels, and 0.02 measured best (docs/experiments.md).
        steps (int): Inversion steps on ``z`` and ``M`` (the authors use 2000).
        inversion_lr (float): Adam learning rate of ``z`` (authors: 0.1).
        mask_lr (float): Adam learning rate of ``M`` (authors: 0.1).
        mask_solver (str): ``"adam"`` (authors), ``"closed_form"`` or ``"none"`` (plain inversion,
            the AnoGAN-style residual baseline).
        latent_init (str): ``"encoder"`` or ``"pool"`` (authors: best of a random pool).
        pool_size (int): Random pool size for ``latent_init="pool"`` (authors: 1000).
        critic_weight (float): Critic realism weight ``lambda_D`` during inversion (authors: 0.1; our patch
            critic pulls on z 90-320x more weakly than the data term, and no weight helped every prior).
        finetune_steps (int): R-RGI steps with per-image generator fine-tuning (0 = RGI).
        finetune_lr (float): Learning rate of the generator weights in R-RGI (authors: 1e-5).
        map_sigma (float): Gaussian smoothing of the anomaly map in pixels (0 = raw ``|M|``); 4 raised
            pixel AUROC by 0.05 to 0.1 in our measurements.
        feature_weight (float): 0: the anomaly map is the mask ``|M|`` alone (the paper's). Above 0: plus
            this weight times the distance between the ImageNet features (EfficientNet-Lite0, shipped
            offline) of the input and of the prior's image at the inversion's starting latent (the
            steps, and R-RGI's fine-tuning above all, can learn part of a defect), in the mask map's
            units (their ratio is calibrated on training crops after every training epoch). It sees
            foreign material that the prior restores as a blur, which the mask misses on stochastic
            textures (docs/experiments.md, sessions 13 and 14).
        feature_prior_weight (float): Above 0: the map also adds this weight times the residual of a
            generative prior of normal FEATURES (an autoencoder of EfficientNet-Lite0 embeddings read at
            twice ``image_size``, 0.3 M weights, fitted on the training images when the fit starts,
            saved in the checkpoint and exported with the inversion), in the mask map's units. It sees
            foreign material on stochastic textures that no restoration shows (docs/experiments.md,
            sessions 21 and 22).
        feature_prior_steps (int): Adam steps (32 embeddings each) that fit the feature prior.
        feature_weights (list[float] | None): Candidate values of ``feature_weight``, and
        feature_prior_weights (list[float] | None): of ``feature_prior_weight``. With either, each
            validation of the fit keeps the pair of weights (over every combination of the candidates;
            a weight without candidates stays as set) whose map has the highest validation Dice at the
            best threshold (``val_pixel_F1Max``; the first on a tie) and learns the thresholds for it;
            the checkpoint records the kept pair as ``feature_weight`` and ``feature_prior_weight``. The
            weights that suit a part differ: the restoration part on brick, the feature prior on grass
            (docs/experiments.md, session 22). Needs validation images with defect masks, like
            ``select_epoch_every``.
        mask_floor (float): The mask map counts only above this level (0: all of it, the paper's
            map). Learned by the fit with ``mask_floor_quantile``; set it by hand to score a prior
            trained without it.
        mask_floor_quantile (float): Above 0: each validation of the fit sets ``mask_floor`` to this
            quantile of the mask map on the defect-free validation images, before the weights are
            chosen and the thresholds learned. With a feature part carrying the defects, the mask's
            level on normal texture is noise: on grass 0.9 kept the feature prior's pixel AUROC and
            raised Dice by 0.03-0.05 (docs/experiments.md, session 23). Needs defect-free
            validation images.
        min_sample_diversity (float): Training stops with :class:`ModeCollapseError`, before that
            epoch's checkpoint is written, when the epoch mean of :func:`sample_diversity` stays below
            this (0 switches the check off). Trained priors measure 0.9 to 1.1, fresh ones 1.2 to
            1.7, a generator that ignores its latent about 0.03; healthy runs can dip to 0.005 in
            early epochs and recover (docs/experiments.md).
        collapse_patience (int): Epochs in a row below ``min_sample_diversity`` before training
            stops; a low LAST epoch stops it at once. 20 leaves room over the longest healthy dip
            measured (18 epochs, down to 0.005, with a latent stride of 32; docs/experiments.md).
        select_epoch_every (int): 0: the prior is the last epoch's. N: validate every N epochs (N must
            divide ``max_epochs``) and keep the epoch whose validation ``val_pixel_F1Max`` (dataset-level
            Dice at the best threshold, with this model's own scoring) is highest, weights and learned
            thresholds together; the validation set needs defect masks. Over 43 GPU-trained priors
            scored at two epochs, the better-validating one gave +0.043 test R-RGI Dice over the last
            on average (worse in 5); over 5 seeds x 3 categories scored every 10 epochs to 40, +0.068
            and +0.057 in two runs (docs/experiments.md); the shipped configs set 10. Each
            validation costs one scoring of the validation set.
        input_size (int | None): Side inputs are resized to (``None``: ``image_size``). A multiple of
            ``image_size``: each input is cut into ``image_size`` tiles side by side, for training
            and scoring alike, and the maps and restorations are stitched back, so small defects on
            large images keep their pixels (anomalib's ``TilerConfigurationCallback`` is not used:
            its stitching did not survive the OpenVINO export).
        pre_processor (PreProcessor | bool): Pre-processor; ``True`` resizes to ``input_size``.
        post_processor (PostProcessor | bool): Post-processor; ``True`` for anomalib's default.
        evaluator (Evaluator | bool): Evaluator; ``True`` adds Dice to anomalib's metrics.
        visualizer (Visualizer | bool): Visualizer; ``True`` also shows the restored image.

    """

    def __init__(
        self,
        image_size: int = 128,
        latent_stride: int = 8,
        latent_channels: int = 8,
        base_channels: int = 8,
        max_epochs: int = 40,
        lr: float = 2e-4,  # noqa: ARG002  (read through self.hparams, like max_epochs)
        adversarial_weight: float = 1.0,
        reconstruction_weight: float = 10.0,
        lam: float = 0.02,
        steps: int = 200,
        inversion_lr: float = 0.1,
        mask_lr: float = 0.1,
        mask_solver: str = "adam",
        latent_init: str = "encoder",
        pool_size: int = 256,
        critic_weight: float = 0.0,
        finetune_steps: int = 0,
        finetune_lr: float = 1e-5,
        map_sigma: float = 4.0,
        feature_weight: float = 0.0,
        feature_prior_weight: float = 0.0,
        feature_prior_steps: int = 1000,
        feature_weights: list[float] | None = None,
        feature_prior_weights: list[float] | None = None,
        mask_floor: float = 0.0,
        mask_floor_quantile: float = 0.0,
        min_sample_diversity: float = 0.2,  # noqa: ARG002  (read through self.hparams)
        collapse_patience: int = 20,
        select_epoch_every: int = 0,
        input_size: int | None = None,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        if pre_processor is True:
            pre_processor = self.configure_pre_processor((input_size or image_size,) * 2)
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        if max_epochs < 1:
            msg = f"max_epochs must be at least 1, got {max_epochs}."
            raise ValueError(msg)
        for name, candidates in {
            "feature_weights": feature_weights,
            "feature_prior_weights": feature_prior_weights,
        }.items():
            if candidates is not None and min(candidates, default=-1) < 0:
                msg = (
                    f"{name}: candidate weights chosen on validation, a non-empty list none below 0; got {candidates}."
                )
                raise ValueError(msg)
        if not 0 <= mask_floor_quantile < 1:
            msg = (
                f"mask_floor_quantile must be in [0, 1) (0: the mask floor is not learned), got {mask_floor_quantile}."
            )
            raise ValueError(msg)
        if feature_prior_steps < 1:
            msg = f"feature_prior_steps must be at least 1, got {feature_prior_steps}."
            raise ValueError(msg)
        if collapse_patience < 1:
            msg = f"collapse_patience must be at least 1 epoch, got {collapse_patience}."
            raise ValueError(msg)
        if select_epoch_every < 0 or (select_epoch_every and max_epochs % select_epoch_every):
            msg = (
                f"select_epoch_every must be 0 (keep the last epoch) or divide max_epochs={max_epochs}, got "
                f"{select_epoch_every}: the last epoch must be validated for its thresholds."
            )
            raise ValueError(msg)
        self.save_hyperparameters(ignore=["pre_processor", "post_processor", "evaluator", "visualizer"])
        self.model = RgiModel(
            image_size=image_size,
            latent_stride=latent_stride,
            latent_channels=latent_channels,
            base_channels=base_channels,
            lam=lam,
            steps=steps,
            lr=inversion_lr,
            mask_lr=mask_lr,
            mask_solver=mask_solver,  # type: ignore[arg-type]
            latent_init=latent_init,
            pool_size=pool_size,
            critic_weight=critic_weight,
            finetune_steps=finetune_steps,
            finetune_lr=finetune_lr,
            map_sigma=map_sigma,
            feature_weight=feature_weight,
            feature_prior_weight=feature_prior_weight,
            mask_floor=mask_floor,
            feature_parts=feature_weights is not None or feature_prior_weights is not None,
            input_size=input_size,
        )
        self.generator_loss = GeneratorLoss(adversarial_weight, reconstruction_weight)
        self.critic_loss = CriticLoss()
        self.automatic_optimization = False
        self._diversity_sum: torch.Tensor | float = 0.0  # a tensor once summed: no host sync per step
        self._diversity_count = 0
        self._low_diversity_epochs = 0
        self._resumed = False
        self._best_epoch: dict[str, Any] | None = None  # {"epoch", "score", "state"} of the best validation
        self._kept_validation: dict[str, float] | None = None  # the final prior's epoch and validation score
        self._calibration_images: torch.Tensor | None = None  # defect-free crops for the feature map's scale
        self._validation_parts: list[tuple[torch.Tensor, ...]] = []  # map parts of a fit's validation, to weigh
        self._validation_choice: dict[str, float] | None = None  # this validation's map settings and their Dice

    def setup(self, stage: str) -> None:
        """Let Lightning's DDP train the GAN.

        Each training step runs two backward passes (critic, then generator + encoder) that each reach
        only part of the weights; DDP's default reducer expects every weight in every backward pass
        and stops with "parameters that were not used". This runs before DDP wraps the model.
        """
        del stage
        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy) and not strategy._ddp_kwargs.get("find_unused_parameters"):
            logger.info("Rgi: enabling DDP's find_unused_parameters (two partial backward passes per step).")
            strategy._ddp_kwargs["find_unused_parameters"] = True
        if self.trainer.world_size > 1:
            self._share_run_folder()

    def _share_run_folder(self) -> None:
        """Make every process write into process 0's run folder.

        anomalib's Engine creates a new version folder (``v0``, ``v1``, ...) in EVERY process before the
        processes connect: process 1 would put its pictures into a folder of its own and point
        ``latest`` at it, a folder without the weights.
        """
        own = Path(self.trainer.default_root_dir)
        shared = Path(self.trainer.strategy.broadcast(str(own)))
        if shared == own:
            return
        self.trainer._default_root_dir = str(shared)
        if own.is_dir() and not any(own.iterdir()):
            own.rmdir()
        latest = own.parent / "latest"
        if latest.is_symlink() and not latest.exists():
            # Replace the dangling link atomically: other processes may be doing the same.
            temporary = own.parent / f".latest-{os.getpid()}"
            temporary.symlink_to(shared, target_is_directory=True)
            temporary.replace(latest)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store every process's random-number state, so a resumed fit continues the same random stream.

        The latents, the encoder's corruptions and the shuffling of the training images all draw from
        torch's global generator; Lightning restores weights, optimisers and loop counters but not it.
        """
        super().on_save_checkpoint(checkpoint)
        checkpoint["rgi_rng_states"] = self._gather_state(torch.get_rng_state())
        checkpoint["rgi_low_diversity_epochs"] = self._low_diversity_epochs
        if self._best_epoch is not None:
            # A resumed fit must still be able to go back to an epoch validated before the interruption.
            checkpoint["rgi_best_epoch"] = self._best_epoch
        if self._kept_validation is not None:
            checkpoint["rgi_kept_validation"] = self._kept_validation
        if self.device.type == "cuda":
            checkpoint["rgi_cuda_rng_states"] = self._gather_state(torch.cuda.get_rng_state(self.device))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check the checkpoint is an Rgi one with this architecture; when resuming a fit, restore RNGs.

        Lightning restores before it draws the first epoch's shuffle, so the resumed fit continues
        the interrupted run's random stream exactly. Loading for inference leaves the RNG alone.
        """
        check_rgi_checkpoint(checkpoint, dict(self.hparams))
        self._match_feature_map_state(checkpoint["state_dict"])
        super().on_load_checkpoint(checkpoint)
        if self._trainer is None or self.trainer.state.fn != TrainerFn.FITTING or "rgi_rng_states" not in checkpoint:
            return
        self._low_diversity_epochs = checkpoint.get("rgi_low_diversity_epochs", 0)
        self._best_epoch = checkpoint.get("rgi_best_epoch")
        states, rank = checkpoint["rgi_rng_states"], self.trainer.global_rank
        if len(states) != self.trainer.world_size:
            logger.warning(
                "Rgi: the checkpoint holds random states of %d processes, this run has %d: the resumed "
                "fit is valid but will not repeat the interrupted run exactly.",
                len(states),
                self.trainer.world_size,
            )
            return
        torch.set_rng_state(states[rank])
        if "rgi_cuda_rng_states" in checkpoint and torch.cuda.is_available():
            torch.cuda.set_rng_state(checkpoint["rgi_cuda_rng_states"][rank], self.trainer.strategy.root_device)
        self._resumed = True

    def _match_feature_map_state(self, state: dict[str, torch.Tensor]) -> None:
        """Let a prior be scored with or without the feature map, whatever it was trained with.

        The feature network's weights are fixed ImageNet ones: a checkpoint without them gets this
        model's; one with them, loaded without the feature map, drops them. A prior trained without
        the map has no calibrated ``feature_scale`` (NaN: scoring asks for a calibration).
        """
        own = {name: value for name, value in self.state_dict().items() if name.startswith(FEATURE_MAP_STATE)}
        for name in [name for name in state if name.startswith(FEATURE_MAP_STATE) and name not in own]:
            del state[name]
        for name, value in own.items():
            state.setdefault(name, value)

    def on_train_start(self) -> None:
        """Fit the feature prior (unless resumed with it); give each DDP process its own random stream.

        Every process fits the same feature prior: its draws come from a generator of its own.
        """
        self._fit_feature_prior()
        if self.trainer.world_size > 1 and not self._resumed:
            torch.manual_seed(torch.initial_seed() + self.global_rank)

    def on_train_epoch_end(self) -> None:
        """Stop on a LASTING mode collapse, before the epoch's checkpoint is written (checkpoints run after this).

        Healthy GAN training dips below the threshold for some early epochs and recovers (down to 0.005,
        for up to 18 epochs in a row, docs/experiments.md), so one low epoch is not a collapse: training stops
        after ``collapse_patience`` low epochs in a row, or when the last epoch is low, so that the
        final checkpoint is never a collapsed generator.
        """
        if self._diversity_count == 0:
            return
        local = torch.as_tensor(self._diversity_sum / self._diversity_count, device=self.device)
        self._diversity_sum, self._diversity_count = 0.0, 0
        # Every DDP process must take the same decision, or the others wait for it forever.
        diversity = float(self.trainer.strategy.reduce(local, reduce_op="mean"))
        self.log("train_sample_diversity", diversity)
        minimum = self.hparams.min_sample_diversity
        self._low_diversity_epochs = self._low_diversity_epochs + 1 if diversity < minimum else 0
        max_epochs = self.trainer.max_epochs
        last_epoch = max_epochs is not None and 0 < max_epochs <= self.current_epoch + 1
        if self._low_diversity_epochs >= self.hparams.collapse_patience or (self._low_diversity_epochs and last_epoch):
            on_disk = f"the one on disk is from epoch {self.current_epoch - 1}" if self.current_epoch else "none is"
            if self._low_diversity_epochs > 1:
                on_disk += ", already below it: retrain rather than use it"
            msg = (
                f"GAN training collapsed at epoch {self.current_epoch}: generated samples vary "
                f"{diversity:.3f} times as much as the training images, below min_sample_diversity="
                f"{minimum} for {self._low_diversity_epochs} epoch(s) in a row"
                f"{' up to the last epoch' if last_epoch else ''}. The prior would restore every image to "
                f"nearly the same picture, so this epoch's checkpoint was not written; {on_disk}. Lower "
                "`lr`, raise `adversarial_weight` or check that the training images are not all alike."
            )
            raise ModeCollapseError(msg)
        if self.hparams.select_epoch_every and (self.current_epoch + 1) % self.hparams.select_epoch_every == 0:
            self._keep_best_epoch(last_epoch)
        elif last_epoch and (score := self._epoch_validation_dice()) is not None:
            self._kept_validation = {"epoch": self.current_epoch, "val_pixel_F1Max": score, **self._map_settings()}

    def _epoch_validation_dice(self) -> float | None:
        """Return the epoch's ``val_pixel_F1Max`` (its validation ran before ``on_train_epoch_end``).

        None when there is none or it is 0: a validation set without defect masks scores 0.
        """
        score = self.trainer.callback_metrics.get("val_pixel_F1Max")
        if self._validation_choice is not None:
            score = self._validation_choice["val_pixel_F1Max"]
        if score is None or not math.isfinite(float(score)) or float(score) <= 0:
            return None
        return float(score)

    def _validation_score(self) -> float:
        """Return the epoch's validation Dice; refuse a validation set that cannot choose the epoch."""
        score = self._epoch_validation_dice()
        if score is None:
            logged = self.trainer.callback_metrics.get("val_pixel_F1Max")
            msg = (
                f"select_epoch_every={self.hparams.select_epoch_every} chooses the epoch by validation Dice, but "
                f"the validation at epoch {self.current_epoch} gave val_pixel_F1Max={logged}: the validation set "
                "needs defective images with masks (e.g. a test split with ground truth and val_split_mode "
                "'from_test'). Set select_epoch_every=0 to keep the last epoch; with defect-free images only, "
                "val_split_mode 'from_train' then learns the thresholds from good images, best with "
                "post_processor=FalseAlarmPostProcessor (README, 'Only good parts')."
            )
            raise ValueError(msg)
        return score

    def _keep_best_epoch(self, last_epoch: bool) -> None:
        """Remember the best-validating epoch; after the last, go back to it before the final checkpoint."""
        score = self._validation_score()
        if self._best_epoch is None or score > self._best_epoch["score"]:
            state = {name: value.detach().cpu().clone() for name, value in self.state_dict().items()}
            self._best_epoch = {
                "epoch": self.current_epoch,
                "score": score,
                "state": state,
                "map_settings": self._map_settings(),
            }
        logger.info(
            "Rgi: epoch %d validates at val_pixel_F1Max %.3f (best so far: epoch %d, %.3f).",
            self.current_epoch,
            score,
            self._best_epoch["epoch"],
            self._best_epoch["score"],
        )
        if not last_epoch:
            return
        best = self._best_epoch
        if best["epoch"] != self.current_epoch:
            logger.info(
                "Rgi: keeping epoch %d (val_pixel_F1Max %.3f) instead of the last, epoch %d (%.3f).",
                best["epoch"],
                best["score"],
                self.current_epoch,
                score,
            )
            self.load_state_dict(best["state"])
            self._set_map_settings(best.get("map_settings", self._map_settings()))
        self.log("selected_epoch", float(best["epoch"]))
        self._kept_validation = {"epoch": best["epoch"], "val_pixel_F1Max": best["score"], **self._map_settings()}
        self._best_epoch = None  # the final checkpoint IS the best epoch; no second copy in it

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args, **kwargs) -> Rgi:  # type: ignore[override]
        """Load a model, refusing checkpoints of other models with a clear message.

        Args:
            checkpoint_path (str | Path): An Rgi checkpoint.
            *args: Passed to :meth:`AnomalibModule.load_from_checkpoint`.
            **kwargs: Passed to :meth:`AnomalibModule.load_from_checkpoint`.

        Returns:
            Rgi: The model.

        """
        cls._read_checkpoint(checkpoint_path)
        return super().load_from_checkpoint(Path(checkpoint_path), *args, **kwargs)

    @classmethod
    def kept_validation(cls, checkpoint_path: str | Path) -> dict[str, float] | None:
        """Return the epoch of a trained prior and its validation Dice, as its fit recorded them.

        Args:
            checkpoint_path (str | Path): The final checkpoint of an Rgi fit (``model.ckpt``).

        Returns:
            dict[str, float] | None: ``{"epoch", "val_pixel_F1Max", "feature_weight",
            "feature_prior_weight", "mask_floor"}`` of the epoch the checkpoint holds (the
            best-validating one with ``select_epoch_every``; the map settings it scores with, chosen
            with ``feature_weights`` or ``feature_prior_weights`` and learned with
            ``mask_floor_quantile``; fits before session 23 lack ``mask_floor``), or None when its
            validation had no defect masks to score or the fit predates the record.

        """
        return cls._read_checkpoint(checkpoint_path).get("rgi_kept_validation")

    @classmethod
    def _read_checkpoint(cls, checkpoint_path: str | Path) -> dict[str, Any]:
        """Load a checkpoint's contents (memory-mapped), refusing missing files and other models clearly."""
        path = Path(checkpoint_path)
        if not path.is_file():
            msg = f"Checkpoint {path} does not exist."
            raise FileNotFoundError(msg)
        with anomalib_safe_globals(extra=cls.checkpoint_safe_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        check_rgi_checkpoint(checkpoint)
        return checkpoint

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize only: the model maps [0, 1] pixels to the generator's [-1, 1] itself."""
        return PreProcessor(transform=Resize(image_size or (128, 128), antialias=True))

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """Anomalib's default metrics plus AUPRO, Dice and the false-alarm rates.

        ``pixel_Dice`` is dataset-level at the learned threshold, ``pixel_F1Max`` the dataset-level
        Dice at the best single threshold, ``pixel_PerImageBestDice`` the paper's per-image oracle;
        ``image_FalseAlarmRate`` and ``pixel_FalseAlarmRate`` the shares of good images and of their pixels flagged.
        """
        test_metrics = [
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
            AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            Dice(prefix="pixel_", strict=False),
            F1Max(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            PerImageBestDice(prefix="pixel_", strict=False),
            # Appended: AUPRO's buffer is saved under its index, and older checkpoints must still load.
            FalseAlarmRate(fields=["pred_label", "gt_label"], prefix="image_"),
            FalseAlarmRate(fields=["pred_mask", "gt_label"], prefix="pixel_", strict=False),
        ]
        # For select_epoch_every; cheap, and it shows the validation Dice in every run's log.
        val_metrics = [F1Max(fields=["anomaly_map", "gt_mask"], prefix="val_pixel_", strict=False)]
        return Evaluator(val_metrics=val_metrics, test_metrics=test_metrics)

    @classmethod
    def configure_visualizer(cls) -> RgiVisualizer:
        """Input, restored image, anomaly map, predicted and ground-truth masks side by side."""
        return RgiVisualizer()

    def configure_callbacks(self) -> list[Callback]:
        """Anomalib's components, plus a checkpoint after EVERY training epoch.

        Validation (the costly inversions) runs only after the last epoch, and Lightning's
        ``ModelCheckpoint`` without a monitor then saves only at that point: an interrupted or
        diverged run would leave nothing. Replacing the Engine's checkpoint callback by one that saves
        at each epoch end (same folder and name; after validation in the last epoch, so the learned
        thresholds are in the final file) keeps the last good state on disk. It must be anomalib's
        class (or a subclass): Lightning drops the Engine's callback only for a returned callback of
        the same type, and two callbacks would write ``model.ckpt`` and ``model-v1.ckpt``.
        """
        callbacks = list(super().configure_callbacks())
        fitting = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        existing = self._trainer.checkpoint_callback if fitting else None
        if isinstance(existing, ModelCheckpoint) and existing.monitor is None:
            callbacks.append(
                ModelCheckpoint(
                    dirpath=existing.dirpath,
                    filename=existing.filename,
                    auto_insert_metric_name=False,
                    save_on_train_epoch_end=True,
                ),
            )
        return callbacks

    def on_fit_start(self) -> None:
        """Refuse to train a prior on nothing: anomalib accepts an empty training folder silently."""
        datamodule = getattr(self.trainer, "datamodule", None)
        train_data = getattr(datamodule, "train_data", None)
        if train_data is not None and len(train_data) == 0:
            where = Path(getattr(datamodule, "root", "?")) / str(getattr(datamodule, "category", "")) / "train"
            msg = f"The training set is empty (looked in {where}): RGI needs defect-free training images."
            raise ValueError(msg)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Adam for the critic and for generator + encoder (DCGAN betas)."""
        betas = (0.5, 0.999)
        critic = torch.optim.Adam(self.model.critic.parameters(), lr=self.hparams.lr, betas=betas)
        generator = torch.optim.Adam(
            [*self.model.generator.parameters(), *self.model.encoder.parameters()],
            lr=self.hparams.lr,
            betas=betas,
        )
        return [critic, generator]

    def training_step(self, batch: Batch, batch_idx: int) -> STEP_OUTPUT:
        """One critic step and one generator/encoder step."""
        del batch_idx
        critic_optimizer, generator_optimizer = self.optimizers()
        self.model.check_images(batch.image)
        images = self.model.tile(batch.image) * 2.0 - 1.0
        latents = self.model.generator.sample_latent(images.shape[0])

        fake = self.model.generator(latents)
        encoded = self.model.encoder(corrupt(images))
        reconstruction = self.model.generator(encoded)

        critic_loss = self.critic_loss(
            self.model.critic(images),
            self.model.critic(fake.detach()),
            self.model.critic(reconstruction.detach()),
        )
        self._check_finite("critic", critic_loss)
        critic_optimizer.zero_grad()
        self.manual_backward(critic_loss)
        critic_optimizer.step()

        losses = self.generator_loss(
            images,
            reconstruction,
            encoded,
            self.model.critic(fake),
            self.model.critic(reconstruction),
        )
        self._check_finite("generator", losses["loss"])
        generator_optimizer.zero_grad()
        self.manual_backward(losses["loss"])
        generator_optimizer.step()
        self.model.trained_steps += 1
        if self.model.feature_distance is not None and self._calibration_images is None:
            self._calibration_images = batch.image[:32].detach().clone()
        if images.shape[0] > 1:
            self._diversity_sum = self._diversity_sum + sample_diversity(fake.detach(), images)
            self._diversity_count += 1

        self.log_dict(
            {"critic_loss": critic_loss.detach(), "generator_loss": losses["loss"].detach()},
            prog_bar=True,
            on_step=True,
            on_epoch=True,
            batch_size=images.shape[0],
        )
        self.log_dict(
            {f"train_{name}": value.detach() for name, value in losses.items() if name != "loss"},
            on_step=False,
            on_epoch=True,
            batch_size=images.shape[0],
        )
        return {"loss": losses["loss"].detach()}

    def on_train_end(self) -> None:
        """Let go of the feature map's calibration crops: the scale is set, and exports would carry them."""
        self._calibration_images = None

    def on_train_batch_end(self, outputs: STEP_OUTPUT, batch: Batch, batch_idx: int) -> None:
        """After an epoch's last step, match the feature map's scale to the prior it now has.

        Validation and the epoch's checkpoint both come after this; every DDP process takes the mean.
        """
        del outputs, batch, batch_idx
        if self.model.feature_distance is None or not self.trainer.is_last_batch:
            return
        scales = self.model.calibrate_feature_scale(self._calibration_images)
        for name, buffer in self.model.feature_scales().items():
            buffer.copy_(self.trainer.strategy.reduce(torch.tensor(scales[name], device=self.device), reduce_op="mean"))

    def to_onnx(
        self,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        **kwargs: Any,  # noqa: ANN401  (passed to torch.onnx.export)
    ) -> Path:
        """Export scoring WITH the robust inversion: ``steps`` unrolled solver steps (see ``export.py``).

        The graph takes one raw image ``(1, 3, input_size, input_size)`` in [0, 1] named ``input`` and
        returns anomalib's fields (``pred_score``, ``pred_label``, ``anomaly_map``, ``pred_mask``)
        after the same post-processing, so ``OpenVINOInferencer`` runs it unchanged.

        Args:
            export_root (Path | str): Folder that receives ``onnx/<model_file_name>.onnx``.
            model_file_name (str): File name without extension.
            input_size (tuple[int, int] | None): Must equal the model's input size if given.
            **kwargs: Passed to ``torch.onnx.export``.

        Returns:
            Path: The ONNX file.

        Raises:
            RuntimeError: If the prior was never trained.
            ValueError: If ``input_size`` differs from the model's input size.

        """
        self._refuse_unfitted_export()
        if self.model.inversion["finetune_steps"] > 0:
            msg = (
                "R-RGI's per-image generator fine-tuning is not exported (it needs weight gradients of "
                "every layer, per image). Export the RGI part: build the model with finetune_steps=0, "
                "run `anomalib validate` so the thresholds come from the exported computation, then export."
            )
            raise NotImplementedError(msg)
        size = (self.model.input_size, self.model.input_size)
        if input_size is not None and tuple(input_size) != size:
            msg = f"Rgi exports at its input size {size}; got input_size={tuple(input_size)}."
            raise ValueError(msg)
        self.eval()
        example = torch.rand(1, self.model.image_channels, *size, device=self.device)
        output_names = [name for name, value in self(example)._asdict().items() if value is not None]

        def score(images: torch.Tensor) -> tuple[torch.Tensor, ...]:
            predictions = self(images)
            return tuple(getattr(predictions, name) for name in output_names)

        graph = trace_unrolled(score, example).eval()
        onnx_path = create_export_root(export_root, ExportType.ONNX) / f"{model_file_name}.onnx"
        torch.onnx.export(
            graph,
            (example,),
            str(onnx_path),
            input_names=["input"],
            output_names=output_names,
            dynamo=True,
            **kwargs,
        )
        return onnx_path

    def to_torch(self, export_root: Path | str, model_file_name: str = "model") -> Path:
        """Export as anomalib does (the whole module pickled, for ``TorchInferencer``), R-RGI included.

        PyTorch cannot pickle the critic's spectral normalisation: the file holds a critic with the
        normalised weights folded in (:meth:`Critic.frozen`), which scores the same and is only
        needed for ``critic_weight > 0``.

        Args:
            export_root (Path | str): Folder that receives ``weights/torch/<model_file_name>.pt``.
            model_file_name (str): File name without extension.

        Returns:
            Path: The ``.pt`` file.

        Raises:
            RuntimeError: If the prior was never trained.

        """
        self._refuse_unfitted_export()
        critic = self.model.critic
        self.model.critic = critic.frozen()
        try:
            return super().to_torch(export_root, model_file_name)
        finally:
            self.model.critic = critic

    def to_openvino(
        self,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        compression_type: CompressionType | None = None,
        datamodule: AnomalibDataModule | None = None,
        metric: Metric | None = None,
        **kwargs: Any,  # noqa: ANN401  (passed to anomalib's to_openvino)
    ) -> Path:
        """Export to OpenVINO as anomalib does (through :meth:`to_onnx`), with clean output names.

        Every compression type of anomalib works. The graph takes one image per call, so the INT8
        calibration images (``INT8_PTQ``, ``INT8_ACQ``: the datamodule's validation images) are fed one
        at a time; anomalib would feed them in the datamodule's evaluation batches. ``INT8_ACQ`` keeps
        ``metric`` (anomalib's default: image F1) within ``max_drop`` on the datamodule's test images,
        through :class:`QuantizationMetric`.

        Args:
            export_root (Path | str): Folder that receives ``weights/openvino/<model_file_name>.xml``.
            model_file_name (str): File name without extension.
            input_size (tuple[int, int] | None): Must equal the model's input size if given.
            compression_type (CompressionType | None): anomalib's ``FP16``, ``INT8`` (weights),
                ``INT8_PTQ`` or ``INT8_ACQ``; the INT8 types need the ``nncf`` package.
            datamodule (AnomalibDataModule | None): Calibration (and, for ``INT8_ACQ``, accuracy) images.
            metric (Metric | None): ``INT8_ACQ``'s accuracy metric.
            **kwargs: Passed to anomalib's ``to_openvino`` (``max_drop``, ``ov_kwargs``, ...).

        Returns:
            Path: The OpenVINO ``.xml`` file.

        Raises:
            ModuleNotFoundError: If an INT8 type is asked for without ``nncf`` installed.
            ValueError: If an INT8 type that calibrates is asked for without a datamodule, or
                ``INT8_ACQ`` with a metric of the ground-truth masks.

        """
        compression_type = CompressionType(compression_type) if compression_type else None
        int8 = compression_type not in {None, CompressionType.FP16}
        if int8 and not module_available("nncf"):
            msg = f"OpenVINO {compression_type.name} compression needs NNCF: pip install nncf (or anomalib-rgi[int8])."
            raise ModuleNotFoundError(msg)
        calibrated = compression_type in {CompressionType.INT8_PTQ, CompressionType.INT8_ACQ}
        if calibrated and datamodule is None:
            msg = f"OpenVINO {compression_type.name} compression calibrates on images: pass a datamodule (--data)."
            raise ValueError(msg)
        if compression_type == CompressionType.INT8_ACQ:
            if "gt_mask" in getattr(metric, "fields", ()):
                msg = "INT8_ACQ validates with image-level fields only: anomalib passes no gt_mask to the metric."
                raise ValueError(msg)
            metric = QuantizationMetric(metric or F1Score(fields=["pred_label", "gt_label"]))
        eval_batch_size = getattr(datamodule, "eval_batch_size", None)
        if calibrated:
            datamodule.eval_batch_size = 1
        try:
            xml_path = super().to_openvino(
                export_root, model_file_name, input_size, compression_type, datamodule, metric, **kwargs
            )
        finally:
            if calibrated:
                datamodule.eval_batch_size = eval_batch_size
        keep_only_output_names(xml_path)
        return xml_path

    def _refuse_unfitted_export(self) -> None:
        if int(self.model.trained_steps) == 0:
            msg = "This Rgi model was never fitted: train it (or load a trained checkpoint) before exporting."
            raise RuntimeError(msg)

    def _gather_state(self, state: torch.Tensor) -> torch.Tensor:
        """``(world_size, ...)`` states of all processes (every process calls this when saving)."""
        gathered = self.all_gather(state.to(self.device)).cpu()
        return gathered if self.trainer.world_size > 1 else gathered[None]

    def _check_finite(self, name: str, loss: torch.Tensor) -> None:
        if not math.isfinite(loss.item()):
            msg = (
                f"GAN training diverged: the {name} loss became {loss.item()} at epoch {self.current_epoch}, "
                f"step {self.global_step}. Training stopped; the last checkpoint written before this point is "
                "intact. Lower `lr` or `adversarial_weight`, or check the training images."
            )
            raise PriorDivergedError(msg)

    def _score(self, batch: Batch) -> Batch:
        return self._fill(batch, self.model.invert(batch.image))

    def _fill(self, batch: Batch, result: InversionResult) -> Batch:
        batch.update(**self.model.predictions(result)._asdict())
        # Not a field of anomalib's batch; the visualizer shows it beside the maps.
        batch.restored = self.model.untile((result.restored + 1.0) / 2.0)
        return batch

    def _training_images(self, limit: int) -> torch.Tensor | None:
        """Return the first ``limit`` images of the attached training set, resized as the model reads them."""
        train_data = getattr(getattr(self._trainer, "datamodule", None), "train_data", None)
        if not train_data:
            return None
        resize = self.pre_processor if isinstance(self.pre_processor, PreProcessor) else nn.Identity()
        return torch.cat([resize(train_data[index].image[None]) for index in range(min(limit, len(train_data)))]).to(
            self.device
        )

    def _fit_feature_prior(self) -> bool:
        """Fit the feature prior on the attached training images if it is not fitted yet.

        Returns:
            bool: Whether it was fitted now.

        """
        prior = self.model.feature_prior
        tiles_per_image = (self.model.input_size // self.model.image_size) ** 2
        if (
            prior is None
            or prior.fitted
            or (images := self._training_images(max(1, FEATURE_PRIOR_TILES // tiles_per_image))) is None
        ):
            return False
        self.model.fit_feature_prior(images, self.hparams.feature_prior_steps)
        logger.info("Rgi: feature prior fitted on %d training images.", len(images))
        return True

    def _calibrate_from_training_data(self) -> bool:
        """Prepare a feature map the prior was trained without, on the attached training images.

        Fits the feature prior if it is not fitted, and calibrates the map's scale if it was never
        calibrated or the feature prior is new. Lets ``anomalib validate/test/predict
        --model.feature_weight 0.5 [--model.feature_prior_weight 1] --ckpt_path <prior>`` work;
        without training images scoring stops and says how to prepare the map.

        Returns:
            bool: Whether the map was prepared now (the checkpoint's thresholds predate it).

        """
        if self.model.feature_distance is None:
            return False
        fitted_now = self._fit_feature_prior()
        if not (fitted_now or any(torch.isnan(scale) for scale in self.model.feature_scales().values())):
            return False
        if (images := self._training_images(32)) is None:
            return False
        scales = self.model.calibrate_feature_scale(images)
        logger.info("Rgi: feature parts calibrated on %d training images (scales %s).", len(images), scales)
        return True

    def _refuse_unlearned_mask_floor(self) -> None:
        """Refuse to score outside a fit with ``mask_floor_quantile`` but no learned floor.

        Raises:
            ValueError: If the floor was never learned (the prior's fit had no ``mask_floor_quantile``).

        """
        if self.trainer.state.fn == TrainerFn.FITTING or not self.hparams.mask_floor_quantile or self.model.mask_floor:
            return
        msg = (
            "mask_floor_quantile learns the mask floor while fitting, and this prior was fitted without it: set "
            "--model.mask_floor to a level of its mask map on good images (e.g. the 0.9 quantile) or refit."
        )
        raise ValueError(msg)

    def _relearn_thresholds(self) -> None:
        """Learn the thresholds and normalisation again on the validation images, as ``validate`` would.

        The checkpoint's were learned on the mask map alone; with the feature part added the map has
        another scale, so its pixel and image labels (and the Dice at the learned threshold) would be
        wrong.
        """
        post_processor = self.post_processor
        if not isinstance(post_processor, PostProcessor):
            return
        learned = post_processor.pixel_threshold.clone()
        datamodule = self.trainer.datamodule
        if not getattr(datamodule, "val_data", None):
            if torch.isnan(learned):
                return
            msg = (
                "Rgi: this prior's thresholds were learned without the feature map, and the datamodule has "
                "no validation images to learn them again with it. Give the datamodule validation images "
                "(val_split_mode), score with feature_weight 0, or train the prior with the feature map."
            )
            raise RuntimeError(msg)
        for index, loaded in enumerate(datamodule.val_dataloader()):
            batch = move_data_to_device(loaded, self.device)
            if isinstance(self.pre_processor, PreProcessor):
                self.pre_processor.on_validation_batch_start(self.trainer, self, batch, index)
            post_processor.on_validation_batch_end(self.trainer, self, self._score(batch), batch, index)
        post_processor.on_validation_epoch_end(self.trainer, self)
        logger.info(
            "Rgi: thresholds learned again with the feature map on %d validation images (pixel %.4g -> %.4g).",
            len(datamodule.val_data),
            learned,
            post_processor.pixel_threshold,
        )

    def on_validation_start(self) -> None:
        """Calibrate the feature map if the prior was trained without it (validation then learns thresholds)."""
        self._refuse_unlearned_mask_floor()
        self._calibrate_from_training_data()

    def on_test_start(self) -> None:
        """Calibrate the feature map if the prior was trained without it, and learn its thresholds."""
        self._refuse_unlearned_mask_floor()
        if self._calibrate_from_training_data():
            self._relearn_thresholds()

    def on_predict_start(self) -> None:
        """Calibrate the feature map if the prior was trained without it, and learn its thresholds."""
        self._refuse_unlearned_mask_floor()
        if self._calibrate_from_training_data():
            self._relearn_thresholds()

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Score validation images; the post-processor learns thresholds from them.

        When the fit learns the map's settings on validation (``feature_weights``,
        ``feature_prior_weights``, ``mask_floor_quantile``), it also keeps the parts of each map.
        """
        del args, kwargs
        result: InversionResult = self.model.invert(batch.image)
        if self._learns_map_settings() and self.trainer.state.fn == TrainerFn.FITTING:
            with torch.autocast(self.device.type, enabled=False):
                parts = {name: self.model.untile(part).cpu() for name, part in self.model.map_parts(result).items()}
            self._validation_parts.append((parts, batch.gt_mask, batch.gt_label))
        return self._fill(batch, result)

    def on_validation_epoch_end(self) -> None:
        """Learn the map's settings on a fit's validation: the mask floor, then the best-validating weights.

        Runs after the callbacks' epoch end (anomalib's post-processor and evaluator), so the
        thresholds are learned again here, from the kept parts, when the settings change.

        Raises:
            ValueError: If the validation images have no defect masks to choose the weights with, or no
                defect-free images to learn the mask floor on.

        """
        if not self._validation_parts:
            return
        kept, self._validation_parts = self._validation_parts, []
        masked = all(gt_mask is not None for _, gt_mask, _ in kept) and any(gt_mask.any() for _, gt_mask, _ in kept)
        candidates = self._candidate_weights()
        if candidates and not masked:
            msg = (
                "feature_weights / feature_prior_weights choose the feature parts' weights by validation Dice, "
                "but the validation images have no defect masks: give the datamodule defective validation images "
                "with masks (val_split_mode 'from_test'), or set the weights yourself (no candidates)."
            )
            raise ValueError(msg)
        settings = self._map_settings()
        if quantile := self.hparams.mask_floor_quantile:
            settings["mask_floor"] = self._good_mask_level(kept, quantile)
            logger.info(
                "Rgi: mask floor %.4g (the %g quantile on the good validation images).",
                settings["mask_floor"],
                quantile,
            )
        options = [settings | weights for weights in candidates] or [settings]
        dice = [self._weighed_dice(kept, option) for option in options] if masked else [math.nan]
        best = max(range(len(options)), key=dice.__getitem__)
        # Each process has scored its share of the images: all keep process 0's choice, and its Dice
        # chooses the epoch in every process alike.
        settings, score = self.trainer.strategy.broadcast((options[best], dice[best]))
        if masked:
            self._validation_choice = {"val_pixel_F1Max": score, **settings}
        self.log_dict({name: float(value) for name, value in settings.items()})
        if candidates:
            logger.info(
                "Rgi: validation Dice per (feature_weight, feature_prior_weight) %s; keeping %s.",
                {
                    (option["feature_weight"], option["feature_prior_weight"]): round(value, 4)
                    for option, value in zip(options, dice, strict=True)
                },
                (settings["feature_weight"], settings["feature_prior_weight"]),
            )
        if settings != self._map_settings():
            self._set_map_settings(settings)
            self._learn_thresholds_from(kept)

    def _learns_map_settings(self) -> bool:
        return bool(self._candidate_weights() or self.hparams.mask_floor_quantile)

    @staticmethod
    def _good_mask_level(kept: list[tuple], quantile: float) -> float:
        """Return the ``quantile`` of the mask map over the pixels of the defect-free kept validation images."""
        good = [parts["mask"][gt_label.cpu() == 0] for parts, _, gt_label in kept if gt_label is not None]
        values = torch.cat([part.flatten() for part in good]) if good else torch.empty(0)
        if not values.numel():
            msg = (
                "mask_floor_quantile learns the mask floor on the defect-free validation images, but the "
                "validation set has none: give the datamodule good validation images, or set mask_floor yourself "
                "(mask_floor_quantile 0)."
            )
            raise ValueError(msg)
        return float(values.kthvalue(max(1, math.ceil(quantile * values.numel()))).values)

    def _candidate_weights(self) -> list[dict[str, float]]:
        """Every combination of the candidate weights; empty when no weight is chosen on validation."""
        restoration, prior = self.hparams.feature_weights, self.hparams.feature_prior_weights
        if restoration is None and prior is None:
            return []
        current = self._map_settings()
        return [
            {"feature_weight": restoration_weight, "feature_prior_weight": prior_weight}
            for restoration_weight in restoration or [current["feature_weight"]]
            for prior_weight in prior or [current["feature_prior_weight"]]
        ]

    def _map_settings(self) -> dict[str, float]:
        model = self.model
        return {
            "feature_weight": model.feature_weight,
            "feature_prior_weight": model.feature_prior_weight,
            "mask_floor": model.mask_floor,
        }

    def _set_map_settings(self, settings: dict[str, float]) -> None:
        """Score with these map settings from now on; the checkpoint's hyperparameters record them."""
        for name, value in settings.items():
            setattr(self.model, name, value)
        self.hparams.update(settings)

    @staticmethod
    def _weigh(parts: dict[str, torch.Tensor], settings: dict[str, float], device: torch.device) -> SimpleNamespace:
        on_device = {name: part.to(device) for name, part in parts.items()}
        anomaly_map = RgiModel.weigh(on_device, **settings).squeeze(1)  # anomalib's batches hold (N, H, W) maps
        return SimpleNamespace(anomaly_map=anomaly_map, pred_score=anomaly_map.flatten(1).amax(dim=1))

    def _weighed_dice(self, kept: list[tuple], settings: dict[str, float]) -> float:
        """``val_pixel_F1Max`` of the map the ``settings`` give, on the kept validation parts."""
        dice = F1Max(fields=["anomaly_map", "gt_mask"])
        for parts, gt_mask, _ in kept:
            weighed = self._weigh(parts, settings, torch.device("cpu"))
            dice.update(SimpleNamespace(anomaly_map=weighed.anomaly_map, gt_mask=gt_mask.cpu()))
        return float(dice.compute())

    def _learn_thresholds_from(self, kept: list[tuple]) -> None:
        """Learn the post-processor's thresholds and normalisation from kept parts at the model's settings."""
        post_processor = self.post_processor
        if not isinstance(post_processor, PostProcessor):
            return
        for parts, gt_mask, gt_label in kept:
            weighed = self._weigh(parts, self._map_settings(), self.device)
            post_processor.on_validation_batch_end(
                self.trainer, self, SimpleNamespace(**vars(weighed), gt_mask=gt_mask, gt_label=gt_label)
            )
        post_processor.on_validation_epoch_end(self.trainer, self)

    def test_step(self, batch: Batch, batch_idx: int, *args, **kwargs) -> STEP_OUTPUT:
        """Score test images by robust inversion."""
        del batch_idx, args, kwargs
        return self._score(batch)

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> STEP_OUTPUT:
        """Score images by robust inversion."""
        del batch_idx, dataloader_idx
        return self._score(batch)

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Train for ``max_epochs``; validate (costly inversions) after the last or every ``select_epoch_every``."""
        epochs = self.hparams.max_epochs
        every = self.hparams.select_epoch_every or epochs
        return {"max_epochs": epochs, "check_val_every_n_epoch": every, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """RGI learns from normal images only."""
        return LearningType.ONE_CLASS
