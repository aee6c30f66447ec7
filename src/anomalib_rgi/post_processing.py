r"""Thresholds set by a false-alarm budget on good validation images.

anomalib learns its thresholds by maximising F1 on validation images with defects. A line that has
only good parts so far has none: anomalib then falls back to the highest score of any good image,
which misses the faint part of every defect (README, "Only good parts"). A factory can state instead
how many false alarms it accepts: ``FalseAlarmPostProcessor`` puts each threshold where that share
of the good validation images (image level) or of their pixels (pixel level) would be flagged. Only
images labelled good count, so validation images with defects may be mixed in (they are ignored:
pixels beside a defect, brightened by the map's smoothing, are no false alarm on a good part); no
defect is needed.

Works with any anomalib model (it is an anomalib ``PostProcessor``; normalisation, sensitivity and
export are the host's).

Example:
    >>> from anomalib_rgi import FalseAlarmPostProcessor, Rgi
    >>> model = Rgi(post_processor=FalseAlarmPostProcessor(pixel_false_alarm_rate=1e-3))

or from the command line::

    anomalib train --config configs/rgi.yaml --data.init_args.val_split_mode from_train \
        --data.init_args.val_split_ratio 0.2 --model.init_args.select_epoch_every 0 \
        --model.init_args.anomaly_map mask+feature_prior --model.init_args.feature_weight 1 \
        --model.init_args.post_processor.init_args.pixel_false_alarm_rate 0.001

(``configs/rgi.yaml`` already thresholds with it; a map chosen on validation needs defects, so a
fixed map is named.)

"""

from __future__ import annotations

import torch
from anomalib.data import Batch
from anomalib.metrics import F1AdaptiveThreshold
from anomalib.metrics.threshold import Threshold
from anomalib.post_processing import PostProcessor
from torchmetrics.utilities import dim_zero_cat


def _check_rate(name: str, rate: float) -> float:
    if not 0.0 <= rate < 1.0:
        msg = f"{name} must be in [0, 1): the share of good images or pixels allowed above the threshold, got {rate}."
        raise ValueError(msg)
    return float(rate)


def false_alarm_threshold(normal_scores: torch.Tensor, rate: float) -> torch.Tensor:
    """Return the lowest threshold that flags at most ``rate`` of ``normal_scores``.

    A score is flagged when it is strictly above the threshold (anomalib's rule), so the threshold is
    the ``k+1``-th highest score with ``k = floor(rate * n)``; ``rate=0`` gives the highest score,
    anomalib's own fallback when validation holds no defect.

    A rate below ``1 / n`` asks for fewer false alarms than the sample can show: the highest of ``n``
    good scores is passed by about one unseen good part in ``n + 1``. The threshold is then the
    ``1 - rate`` quantile of a normal fit of the scores (their mean plus ``z`` standard deviations),
    if that lies above the highest: 20 good validation parts and a rate of 0.01 put it at the mean
    plus 2.33 deviations, where the highest of 20 lies about 1.9 deviations above the mean.

    Args:
        normal_scores (torch.Tensor): Scores of good images or of their pixels, any shape.
        rate (float): Share in [0, 1) that may lie above the threshold.

    Returns:
        torch.Tensor: 0-d threshold.

    Raises:
        ValueError: If ``normal_scores`` is empty or ``rate`` is outside [0, 1).

    """
    rate = _check_rate("rate", rate)
    scores = normal_scores.flatten()
    if scores.numel() == 0:
        msg = "No scores of good images to set a false-alarm threshold with: validate on some good images."
        raise ValueError(msg)
    allowed = int(rate * scores.numel())
    threshold = torch.topk(scores, allowed + 1, sorted=True).values[-1]
    if rate > 0 and allowed == 0 and scores.numel() > 1:
        z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1.0 - rate))
        threshold = torch.maximum(threshold, scores.mean() + z.to(scores) * scores.std())
    return threshold


class FalseAlarmRateThreshold(Threshold):
    """The threshold that flags a chosen share of the good images (or their pixels) seen in validation.

    Updated with anomalib batches: ``pred_score`` (image level, ``pixel=False``) or ``anomaly_map``
    (pixel level) of the images whose ``gt_label`` is 0 (all images when there are no labels).
    Batches without that score are skipped; with no score seen at all, ``compute`` returns NaN
    (anomalib then matches the other level's threshold). It keeps every score it reads until
    ``compute`` (4 bytes a pixel: 3 MB for 48 good images of 128 x 128 pixels), as anomalib's F1
    threshold does.

    Args:
        rate (float): Share in [0, 1) of good scores allowed above the threshold.
        pixel (bool): Threshold the anomaly maps instead of the image scores.
        **kwargs: Passed to ``torchmetrics.Metric``.

    """

    full_state_update = False

    def __init__(self, rate: float, pixel: bool, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rate = _check_rate("rate", rate)
        self.pixel = pixel
        self.add_state("normal_scores", default=[], dist_reduce_fx="cat")
        self.add_state("seen", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, batch: Batch) -> None:  # type: ignore[override]
        """Keep the scores of the good images of one batch."""
        scores = batch.anomaly_map if self.pixel else batch.pred_score
        if scores is None:
            return
        self.seen += scores.numel()
        normal = torch.ones_like(scores, dtype=torch.bool)
        if batch.gt_label is not None:
            normal &= ~batch.gt_label.reshape(-1, *[1] * (scores.dim() - 1)).bool()
        self.normal_scores.append(scores[normal].float())

    def compute(self) -> torch.Tensor:
        """Return the threshold, NaN if no score was seen.

        Raises:
            ValueError: If scores were seen but none of a good image.

        """
        if int(self.seen) == 0:
            return torch.tensor(float("nan"))
        scores = dim_zero_cat(self.normal_scores) if self.normal_scores else torch.empty(0)
        return false_alarm_threshold(scores, self.rate)


class FalseAlarmPostProcessor(PostProcessor):
    """anomalib's post-processor with thresholds set by a false-alarm budget instead of F1.

    Args:
        pixel_false_alarm_rate (float | None): Share of the pixels of good validation images flagged
            (default 0.001: one pixel in a thousand). ``None``: the pixel threshold is anomalib's,
            F1-optimal on validation images with defect masks: a line that has them keeps the
            outline that fits them best and sets only its image threshold, which decides whether a
            part is rejected, by its false-alarm budget.
        image_false_alarm_rate (float): Share of good validation images flagged (default 0:
            none, the highest good image's score, as anomalib does without defects).
        **kwargs: ``PostProcessor`` arguments (normalisation, sensitivities, threshold matching).

    Raises:
        ValueError: If a rate is outside [0, 1).

    """

    def __init__(
        self, pixel_false_alarm_rate: float | None = 1e-3, image_false_alarm_rate: float = 0.0, **kwargs
    ) -> None:
        image_false_alarm_rate = _check_rate("image_false_alarm_rate", image_false_alarm_rate)
        super().__init__(**kwargs)
        self.pixel_false_alarm_rate = pixel_false_alarm_rate
        self._image_threshold_metric = FalseAlarmRateThreshold(image_false_alarm_rate, pixel=False)

    @property
    def pixel_false_alarm_rate(self) -> float | None:
        """Share of the pixels of good validation images the pixel threshold flags (None: F1-optimal)."""
        return getattr(self._pixel_threshold_metric, "rate", None)

    @pixel_false_alarm_rate.setter
    def pixel_false_alarm_rate(self, rate: float | None) -> None:
        if rate is None:
            self._pixel_threshold_metric = F1AdaptiveThreshold(fields=["anomaly_map", "gt_mask"], strict=False)
        else:
            self._pixel_threshold_metric = FalseAlarmRateThreshold(
                _check_rate("pixel_false_alarm_rate", rate), pixel=True
            )

    @property
    def image_false_alarm_rate(self) -> float:
        """Share of good validation images the image threshold flags."""
        return self._image_threshold_metric.rate

    @image_false_alarm_rate.setter
    def image_false_alarm_rate(self, rate: float) -> None:
        self._image_threshold_metric.rate = _check_rate("image_false_alarm_rate", rate)

    @property
    def _checkpoint_config_keys(self) -> tuple[str, ...]:
        return (*super()._checkpoint_config_keys, "pixel_false_alarm_rate", "image_false_alarm_rate")
