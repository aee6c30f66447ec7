"""RGI / R-RGI as an anomalib model: the Lightning glue.

``fit`` trains the GAN prior (generator, encoder, critic) on the normal training images with
Lightning's manual optimisation; validation, test and predict score images by robust GAN inversion.
The pixel anomaly map is named by ``anomaly_map``: the paper's mask ``|M|`` alone, or the mask plus
one added part (the start's coarse residual or an ImageNet-feature part), or whichever of these
validation prefers (:mod:`.anomaly_map`). R-RGI is
the same model with ``finetune_steps > 0``.

Example:
    >>> from anomalib.engine import Engine
    >>> from anomalib_rgi import Rgi
    >>> from anomalib_rgi.data import RgiTextures
    >>> engine = Engine()
    >>> engine.train(Rgi(anomaly_map="mask"), datamodule=RgiTextures(category="brick"))  # doctest: +SKIP

"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.callbacks import ModelCheckpoint
from anomalib.data import Batch, InferenceBatch
from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Max, F1Score
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torchvision.transforms.v2 import Resize

from anomalib_rgi.metrics import Dice, EscapeRate, FalseAlarmRate, PerImageBestDice
from anomalib_rgi.visualization import RgiVisualizer

from .anomaly_map import ADDED_PARTS, MapKind, describe_map, image_score, map_kind, weigh_maps
from .callbacks import (
    CollapseMonitor,
    DistributedFit,
    EpochSelection,
    FeaturePartsPreparation,
    ResumableRandomState,
    is_last_epoch,
)
from .checkpoint import check_rgi_checkpoint, match_map_state, read_checkpoint
from .export import RgiExportMixin
from .inversion import InversionResult
from .loss import CriticLoss, GeneratorLoss, corrupt
from .map_selection import KeptBatch, choose_settings, learn_thresholds, weighed_batch
from .networks import sample_diversity
from .settings import ADVANCED_SOLVER, PRIOR_DEFAULTS, advanced_settings, check_arguments, plain, without_retired
from .torch_model import RgiModel

logger = logging.getLogger(__name__)

# Training crops the added parts are calibrated on, at most: the coarse residual learns a level per
# position from them (about 6 MB per hundred 128 px crops).
CALIBRATION_IMAGES = 256


class PriorDivergedError(RuntimeError):
    """The GAN prior's training produced a non-finite loss."""


class Rgi(RgiExportMixin, AnomalibModule):
    """Robust GAN inversion (RGI, ICLR 2023) for unsupervised pixel-wise anomaly detection.

    Args:
        image_size (int): Side of the square images the prior is trained on and inverts.
        input_size (int | None): Side inputs are resized to (``None``: ``image_size``). A multiple of
            ``image_size``: each input is cut into ``image_size`` tiles side by side, for training and
            scoring alike, and the maps and restorations are stitched back, so small defects on large
            images keep their pixels.
        max_epochs (int): Epochs of GAN training.
        lam (float): Mask sparsity ``lambda`` in [-1, 1] pixel units: ``M`` is non-zero where the squared
            residual exceeds ``lam / 2``. The authors use 0.4 for their PGGAN; our prior leaves smaller
            residuals on normal pixels (docs/method.md).
        steps (int): Inversion steps on ``z`` and ``M`` (the authors use 2000).
        finetune_steps (int): R-RGI: steps that also fine-tune a private copy of the generator per image
            (0: RGI).
        anomaly_map (MapKind): The pixel anomaly map. ``"mask"``: the paper's, ``|M|`` alone.
            ``"mask+coarse_residual"``: plus the input's residual from the prior's image at the inversion's
            start, averaged over windows a quarter of the image wide; it adds up faint, spread-out defects
            (stains, tints, shading) that no single pixel of the mask sees. ``"mask+feature_distance"``: plus
            the distance between the ImageNet features (EfficientNet-Lite0, shipped offline) of the input and
            of the prior's image at the inversion's start; it sees foreign material that the prior restores
            as a blur. ``"mask+feature_prior"``: plus the residual of a
            generative prior of normal ImageNet features, fitted when the fit starts. ``"best_on_validation"``:
            each validation of the fit keeps, among the mask with or without the coarse residual, beside no
            feature part or one, the lightest map (least weight added to the mask) among those within 0.01
            of the best validation pixel AUROC and of the best Dice, and the image score of the best image
            AUROC (needs defect masks in the validation images).
        feature_weight (float | list[float]): Weight of the added part, in the mask map's units (the
            part's scale is calibrated on training images). A list: candidates, the best-validating kept.
        mask_floor_quantile (float): Above 0: the mask counts only above its level on good parts, learned
            by each validation of the fit as this quantile of the mask on the defect-free validation
            images. Where an added part carries the defects, the mask's level on normal texture is noise.
            The coarse residual's floor is the same quantile of its own level: at a heavy weight its
            level on normal texture would hide thin defects' mask.
        map_sigma (float): Gaussian smoothing of the map in pixels (0: none).
        select_epoch_every (int): 0: the prior is the last epoch's. N: validate every N epochs (N divides
            ``max_epochs``) and keep the epoch with the best validation Dice, weights, map settings and
            thresholds together; needs defect masks in the validation images.
        prior (dict[str, Any] | None): Advanced: the GAN prior's architecture and training, over
            :data:`~.checkpoint.PRIOR_DEFAULTS` (``latent_stride``, ``latent_channels``, ``base_channels``,
            ``lr``, ``adversarial_weight``, ``reconstruction_weight``, ``min_sample_diversity`` and
            ``collapse_patience`` of the mode-collapse stop).
        solver (dict[str, Any] | None): Advanced: the inversion's other settings (``lr`` of ``z``,
            ``mask_lr``, ``mask_solver`` "adam" / "closed_form" / "none", ``critic_weight``,
            ``finetune_lr``, ``latent_init`` "encoder" / "pool", ``pool_size``); docs/settings.md.
        pre_processor (PreProcessor | bool): Pre-processor; ``True`` resizes to ``input_size``.
        post_processor (PostProcessor | bool): Post-processor; ``True`` for anomalib's default.
        evaluator (Evaluator | bool): Evaluator; ``True`` adds Dice and false-alarm rates to anomalib's metrics.
        visualizer (Visualizer | bool): Visualizer; ``True`` also shows the restored image.

    Raises:
        ValueError: On any invalid setting, before anything is trained.

    """

    def __init__(
        self,
        image_size: int = 128,
        input_size: int | None = None,
        max_epochs: int = 40,
        lam: float = 0.02,
        steps: int = 200,
        finetune_steps: int = 0,
        anomaly_map: MapKind = "mask",
        feature_weight: float | list[float] = 0.5,
        mask_floor_quantile: float = 0.0,
        map_sigma: float = 4.0,
        select_epoch_every: int = 0,
        prior: dict[str, Any] | None = None,
        solver: dict[str, Any] | None = None,
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
        prior = without_retired(plain(prior))  # saved below, as the fit uses it
        solver, feature_weight = plain(solver), plain(feature_weight)
        prior_settings = advanced_settings("prior", prior, PRIOR_DEFAULTS)
        solver_settings = advanced_settings("solver", solver, ADVANCED_SOLVER)
        check_arguments(max_epochs, mask_floor_quantile, select_epoch_every, prior_settings)
        self.save_hyperparameters(ignore=["pre_processor", "post_processor", "evaluator", "visualizer"])
        self.prior_settings = prior_settings
        latent_init, pool_size = solver_settings.pop("latent_init"), solver_settings.pop("pool_size")
        self.model = RgiModel(
            image_size=image_size,
            input_size=input_size,
            latent_stride=prior_settings["latent_stride"],
            latent_channels=prior_settings["latent_channels"],
            base_channels=prior_settings["base_channels"],
            solver={"lam": lam, "steps": steps, "finetune_steps": finetune_steps, **solver_settings},
            latent_init=latent_init,
            pool_size=pool_size,
            anomaly_map=anomaly_map,
            feature_weight=feature_weight,
            map_sigma=map_sigma,
            learn_mask_floor=mask_floor_quantile > 0,
        )
        self.generator_loss = GeneratorLoss(
            prior_settings["adversarial_weight"], prior_settings["reconstruction_weight"]
        )
        self.critic_loss = CriticLoss()
        self.automatic_optimization = False
        self._kept_validation: dict[str, Any] | None = None  # the final prior's epoch, validation Dice and map
        # Defect-free crops of the first epoch: the added parts' scales and the coarse residual's normal level.
        self._calibration_images: torch.Tensor | None = None
        self._calibration_epoch = 0
        self._validation_parts: list[KeptBatch] = []  # map parts of a fit's validation, to weigh and choose
        self._validation_score: float | None = None  # this validation's Dice (None: no defect masks)
        self.thresholds_stale = False  # loaded thresholds were learned for another map than this model's

    def configure_callbacks(self) -> list[Callback]:
        """Anomalib's components and the added parts' preparation; a fit adds :mod:`.callbacks`' others.

        And a checkpoint after EVERY epoch: validation runs only every ``select_epoch_every`` epochs,
        and a ``ModelCheckpoint`` without a monitor saves only then, so an interrupted run would leave
        nothing. It replaces the Engine's (same class, folder and name: Lightning then drops that one).
        """
        callbacks = [
            *super().configure_callbacks(),
            FeaturePartsPreparation(),
        ]
        fitting = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        if not fitting:
            return callbacks
        callbacks += [DistributedFit(), ResumableRandomState()]
        if self.prior_settings["min_sample_diversity"] > 0:
            callbacks.append(
                CollapseMonitor(self.prior_settings["min_sample_diversity"], self.prior_settings["collapse_patience"])
            )
        if self.hparams.select_epoch_every:
            callbacks.append(EpochSelection(self.hparams.select_epoch_every))
        existing = self._trainer.checkpoint_callback
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

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the kept epoch's validation in the checkpoint (:meth:`kept_validation`)."""
        super().on_save_checkpoint(checkpoint)
        if self._kept_validation is not None:
            checkpoint["rgi_kept_validation"] = self._kept_validation

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check the checkpoint is an Rgi one of this architecture, and score with this model's map.

        A model built with a fixed map scores with its own weights, whatever the checkpoint chose; the
        learned floor and a ``best_on_validation`` choice come from the checkpoint.
        """
        check_rgi_checkpoint(checkpoint, dict(self.hparams))
        own = self.model.anomaly_map
        fixed = own.kind != "best_on_validation"
        self.thresholds_stale = match_map_state(checkpoint["state_dict"], self.state_dict(), fixed, own.learn_floor)
        super().on_load_checkpoint(checkpoint)
        self._kept_validation = checkpoint.get("rgi_kept_validation")

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
        read_checkpoint(checkpoint_path, cls.checkpoint_safe_globals())
        return super().load_from_checkpoint(Path(checkpoint_path), *args, **kwargs)

    @classmethod
    def kept_validation(cls, checkpoint_path: str | Path) -> dict[str, Any] | None:
        """Return the epoch of a trained prior, its validation Dice and its map, as its fit recorded them.

        Args:
            checkpoint_path (str | Path): The final checkpoint of an Rgi fit (``model.ckpt``).

        Returns:
            dict[str, Any] | None: ``{"epoch", "val_pixel_F1Max", "anomaly_map", "feature_weight",
            "mask_floor", "described"}`` of the epoch the checkpoint holds (``described``: the pixel map
            and the image score's map, as results tables name them), or None when its validation had no
            defect masks to score.

        """
        return read_checkpoint(checkpoint_path, cls.checkpoint_safe_globals()).get("rgi_kept_validation")

    def record_kept_validation(self, epoch: int, score: float) -> None:
        """Record the kept epoch's validation Dice and map; the checkpoint carries it (:meth:`kept_validation`)."""
        settings = self.model.anomaly_map.settings
        weight = max(settings[part] for part in ADDED_PARTS)
        self._kept_validation = {
            "epoch": epoch,
            "val_pixel_F1Max": score,
            "anomaly_map": map_kind(settings),
            "feature_weight": weight,
            "mask_floor": settings["mask_floor"],
            "described": describe_map(settings),
        }

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
        betas, lr = (0.5, 0.999), self.prior_settings["lr"]
        critic = torch.optim.Adam(self.model.critic.parameters(), lr=lr, betas=betas)
        generator = torch.optim.Adam(
            [*self.model.generator.parameters(), *self.model.encoder.parameters()], lr=lr, betas=betas
        )
        return [critic, generator]

    def training_step(self, batch: Batch, batch_idx: int) -> STEP_OUTPUT:
        """One critic step and one generator/encoder step; report the samples' diversity."""
        del batch_idx
        critic_optimizer, generator_optimizer = self.optimizers()
        self.model.check_images(batch.image)
        images = self.model.tile(batch.image) * 2.0 - 1.0
        latents = self.model.generator.sample_latent(images.shape[0])

        fake = self.model.generator(latents)
        encoded = self.model.encoder(corrupt(images, faint=self.prior_settings["faint_corruptions"]))
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
            images, reconstruction, encoded, self.model.critic(fake), self.model.critic(reconstruction)
        )
        self._check_finite("generator", losses["loss"])
        generator_optimizer.zero_grad()
        self.manual_backward(losses["loss"])
        generator_optimizer.step()
        self.model.trained_steps += 1
        if self.model.anomaly_map.scales():
            self._keep_calibration_images(batch.image)

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
        output = {"loss": losses["loss"].detach()}
        if images.shape[0] > 1:
            output["sample_diversity"] = sample_diversity(fake.detach(), images)
        return output

    def _keep_calibration_images(self, images: torch.Tensor) -> None:
        """Keep the first epoch's training crops (at most :data:`CALIBRATION_IMAGES`) for the added parts."""
        kept = self._calibration_images
        if kept is None:
            self._calibration_epoch = self.current_epoch
        elif self.current_epoch != self._calibration_epoch:
            return
        room = CALIBRATION_IMAGES - (0 if kept is None else len(kept))
        if room > 0:
            new = images[:room].detach().clone()
            self._calibration_images = new if kept is None else torch.cat([kept, new])

    def _check_finite(self, name: str, loss: torch.Tensor) -> None:
        if not math.isfinite(loss.item()):
            msg = (
                f"GAN training diverged: the {name} loss became {loss.item()} at epoch {self.current_epoch}, "
                f"step {self.global_step}. Training stopped; the last checkpoint written before this point is "
                "intact. Lower the prior's `lr` or `adversarial_weight`, or check the training images."
            )
            raise PriorDivergedError(msg)

    def on_train_batch_end(self, outputs: STEP_OUTPUT, batch: Batch, batch_idx: int) -> None:
        """After the last step of an epoch that validates, match the added parts' scales to the prior it now has.

        Validation and the epoch's checkpoint both come after this; every DDP process takes the mean (of
        the coarse residual's centre and spread too). Only a validated epoch can be kept, so the epochs
        between validations skip the calibration (an epoch's checkpoint keeps the scales of the last
        validated one until then).
        """
        del outputs, batch, batch_idx
        if not self.model.anomaly_map.scales() or not self.trainer.is_last_batch:
            return
        validates = (self.current_epoch + 1) % self.trainer.check_val_every_n_epoch == 0
        if not validates and not is_last_epoch(self.trainer):
            return
        scales = self.model.calibrate_feature_scale(self._calibration_images)
        for name, buffer in self.model.anomaly_map.scales().items():
            buffer.copy_(self.trainer.strategy.reduce(torch.tensor(scales[name], device=self.device), reduce_op="mean"))
        if (coarse := self.model.anomaly_map.coarse_residual) is not None:
            for buffer in (coarse.centre, coarse.spread):
                buffer.copy_(self.trainer.strategy.reduce(buffer.clone(), reduce_op="mean"))

    def on_train_epoch_end(self) -> None:
        """Record the last epoch's validation when no epoch is chosen (:class:`EpochSelection` records its own)."""
        last = is_last_epoch(self.trainer)
        if last and not self.hparams.select_epoch_every and self._validation_score is not None:
            self.record_kept_validation(self.current_epoch, self._validation_score)

    def on_train_end(self) -> None:
        """Let go of the calibration crops: the scales are set, and exports would carry them."""
        self._calibration_images = None

    def _fill(self, batch: Batch, result: InversionResult, predictions: InferenceBatch | None = None) -> Batch:
        batch.update(**(predictions or self.model.predictions(result))._asdict())
        # Not a field of anomalib's batch; the visualizer shows it beside the maps.
        batch.restored = self.model.untile((result.restored + 1.0) / 2.0)
        return batch

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Score validation images; the post-processor learns thresholds from them.

        In a fit the map's parts are kept as well, to choose the map's settings and the epoch on.
        """
        del args, kwargs
        result = self.model.invert(batch.image)
        if self.trainer.state.fn != TrainerFn.FITTING:
            return self._fill(batch, result)
        anomaly_map = self.model.anomaly_map
        with torch.autocast(self.device.type, enabled=False):
            parts = anomaly_map.parts(result, weighted_only=not anomaly_map.learns_settings)
            parts = {name: self.model.untile(part) for name, part in parts.items()}
            settings = anomaly_map.settings
            if math.isnan(settings["mask_floor"]):  # not learned yet: this validation learns it
                settings = settings | {"mask_floor": 0.0}
            maps, score_maps = weigh_maps(parts, settings)
        self._validation_parts.append(
            ({name: part.cpu() for name, part in parts.items()}, batch.gt_mask, batch.gt_label)
        )
        predictions = InferenceBatch(pred_score=image_score(score_maps), anomaly_map=maps)
        return self._fill(batch, result, predictions)

    def on_validation_epoch_end(self) -> None:
        """Learn the map's settings on a fit's validation (floor, then weights) and measure its Dice.

        Runs after the callbacks' epoch end (anomalib's post-processor and evaluator), so the
        thresholds are learned again here, from the kept parts, when the settings change.
        """
        if not self._validation_parts:
            return
        kept, self._validation_parts = self._validation_parts, []
        anomaly_map = self.model.anomaly_map
        settings, score, options = choose_settings(
            kept,
            anomaly_map.settings,
            anomaly_map.candidates,
            anomaly_map.learn_floor and self.hparams.mask_floor_quantile,
        )
        # Each process has scored its share of the images: all keep process 0's choice, and its Dice
        # chooses the epoch in every process alike.
        settings, score = self.trainer.strategy.broadcast((settings, score))
        self._validation_score = score
        self.log_dict({f"map_{name}": float(value) for name, value in settings.items()})
        if options:
            logger.info(
                "Rgi: validation Dice / pixel AUROC / image AUROC per map %s; keeping %s.",
                {name: "/".join(f"{value:.4f}" for value in row.values()) for name, row in options.items()},
                describe_map(settings),
            )
        if settings != anomaly_map.settings:
            anomaly_map.set_settings(settings)
            if isinstance(self.post_processor, PostProcessor):
                batches = (weighed_batch(parts, settings, self.device, *truth) for parts, *truth in kept)
                learn_thresholds(self.post_processor, self.trainer, self, batches)

    def validation_dice(self, required_by: str) -> float:
        """Return the last validation's Dice at the best threshold, computed by the model itself.

        Raises:
            ValueError: If the validation images had no defect masks, naming what needed the Dice.

        """
        if self._validation_score is None or not self._validation_score > 0:
            msg = (
                f"{required_by} chooses by validation Dice, but the validation images at epoch {self.current_epoch} "
                "have no defects with masks. Give the datamodule defective validation images with masks "
                "(val_split_mode 'from_test'), or set select_epoch_every 0 to keep the last epoch; with good "
                "images only, learn the thresholds with FalseAlarmPostProcessor (docs/settings.md)."
            )
            raise ValueError(msg)
        return self._validation_score

    def test_step(self, batch: Batch, batch_idx: int, *args, **kwargs) -> STEP_OUTPUT:
        """Score test images by robust inversion."""
        del batch_idx, args, kwargs
        return self._fill(batch, self.model.invert(batch.image))

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> STEP_OUTPUT:
        """Score images by robust inversion."""
        del batch_idx, dataloader_idx
        return self._fill(batch, self.model.invert(batch.image))

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize only: the model maps [0, 1] pixels to the generator's [-1, 1] itself."""
        return PreProcessor(transform=Resize(image_size or (128, 128), antialias=True))

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """Anomalib's default metrics plus AUPRO, Dice and the false-alarm rates.

        ``pixel_Dice`` is dataset-level at the learned threshold, ``pixel_F1Max`` the dataset-level
        Dice at the best single threshold, ``pixel_PerImageBestDice`` the paper's per-image oracle;
        ``image_FalseAlarmRate`` and ``pixel_FalseAlarmRate`` the shares of good images and of their
        pixels flagged, ``image_EscapeRate`` the share of defective images passed as good.
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
            FalseAlarmRate(fields=["pred_label", "gt_label"], prefix="image_"),
            EscapeRate(fields=["pred_label", "gt_label"], prefix="image_"),
            FalseAlarmRate(fields=["pred_mask", "gt_label"], prefix="pixel_", strict=False),
        ]
        # Shows the validation Dice in every run's log; the model computes its own for its choices.
        val_metrics = [F1Max(fields=["anomaly_map", "gt_mask"], prefix="val_pixel_", strict=False)]
        return Evaluator(val_metrics=val_metrics, test_metrics=test_metrics)

    @classmethod
    def configure_visualizer(cls) -> RgiVisualizer:
        """Input, restored image, anomaly map, predicted and ground-truth masks side by side."""
        return RgiVisualizer()

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
