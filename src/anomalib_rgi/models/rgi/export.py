"""Export the robust inversion itself: K unrolled Adam steps, forward and backward, as one graph.

ONNX and OpenVINO have no autograd, and ``torch.export`` cannot trace ``torch.autograd.grad``. But the
gradient of a network with respect to its INPUT is itself a network of forward operators. ``make_fx``
traces the whole scoring function (pre-processing, encoder start, K solver steps with their backward
passes, map, post-processing) into aten operators; the two backward operators our generator needs
and ONNX lacks are rewritten as forward ones:

- ``convolution_backward`` (input gradient only): a transposed convolution with the same weights;
- ``upsample_nearest2d_backward``: a sum over each block, i.e. ``avg_pool2d * block size``.

The traced graph is then exported with the dynamo ONNX exporter like any anomalib model.

The graph grows with every unrolled step, and so does the time to build it: before building, the
export times the trace at one and two steps and stops at once, with the command that exports a
deployable model, when the whole export would take longer than ``ANOMALIB_RGI_EXPORT_BUDGET_S``
(120 s unless set).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from anomalib.data import AnomalibDataModule
from anomalib.deploy import CompressionType, ExportType
from anomalib.metrics import F1Score
from anomalib.models.components.base.export_mixin import ExportMixin
from anomalib.models.components.base.export_mixin.utils import create_export_root
from lightning_utilities.core.imports import module_available
from torch._decomp import core_aten_decompositions
from torch.fx import GraphModule
from torch.fx.experimental.proxy_tensor import make_fx
from torchmetrics import Metric

from anomalib_rgi.metrics import QuantizationMetric

aten = torch.ops.aten
logger = logging.getLogger(__name__)

DEFAULT_BUDGET_S = 120.0
DEPLOYABLE_STEPS = 10  # the default's (configs/rgi.yaml): never refused, however slow the machine
# The whole export (trace, ONNX export, OpenVINO conversion) over the trace alone: 3.8 at 10 steps and
# 5.1 at 20 on the main job's prior, 8 for each step added (research/notebook.md, 2026-12-06).
EXPORT_OVER_TRACE = 5.0


class ExportTooSlowError(RuntimeError):
    """Building the unrolled graph would take longer than the export budget."""


def _convolution_input_gradient(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias_sizes: Sequence[int] | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    transposed: bool,
    output_padding: Sequence[int],
    groups: int,
    output_mask: Sequence[bool],
) -> tuple[torch.Tensor | None, None, None]:
    del bias_sizes, output_padding
    if transposed or any(output_mask[1:]):
        msg = "Export supports input gradients of ordinary convolutions only (the generator is frozen in RGI)."
        raise NotImplementedError(msg)
    # Output padding restores the input size when a strided convolution dropped rows or columns.
    restored_padding = [
        size - ((out - 1) * step - 2 * pad + dil * (kernel - 1) + 1)
        for size, out, step, pad, dil, kernel in zip(
            input.shape[2:], grad_output.shape[2:], stride, padding, dilation, weight.shape[2:], strict=True
        )
    ]
    grad_input = aten.convolution(grad_output, weight, None, stride, padding, dilation, True, restored_padding, groups)
    return grad_input, None, None


def _upsample_nearest_gradient(
    grad_output: torch.Tensor,
    output_size: Sequence[int],
    input_size: Sequence[int],
    scales_h: float | None = None,
    scales_w: float | None = None,
) -> torch.Tensor:
    del scales_h, scales_w
    block = [output_size[0] // input_size[2], output_size[1] // input_size[3]]
    return aten.avg_pool2d(grad_output, block, block) * (block[0] * block[1])


def export_decompositions() -> dict:
    """Decomposition table that turns the solver's backward passes into exportable forward operators."""
    table = core_aten_decompositions()
    table[aten.convolution_backward.default] = _convolution_input_gradient
    table[aten.upsample_nearest2d_backward.default] = _upsample_nearest_gradient
    return table


def trace_unrolled(function: Callable[[torch.Tensor], object], example: torch.Tensor) -> GraphModule:
    """Trace ``function`` (which may run autograd inside) into a graph of exportable aten operators.

    Args:
        function (Callable): Maps an image batch to the outputs to export.
        example (torch.Tensor): Example input; its shape is baked into the graph.

    Returns:
        GraphModule: Same outputs as ``function`` for inputs of ``example``'s shape.

    """
    with torch.no_grad():
        return make_fx(function, tracing_mode="real", decomposition_table=export_decompositions())(example)


def keep_only_output_names(xml_path: Path) -> None:
    """Drop the names of internal tensors of a saved OpenVINO model, in place.

    OpenVINO's compiler merges the names of tensors joined by eliminated no-op nodes, so an output
    can come back named ``{"anomaly_map", "clamp_1"}``; anomalib's ``OpenVINOInferencer`` takes an
    arbitrary one of them as the field name and fails. Internal tensors need no names.
    """
    import openvino as ov  # noqa: PLC0415

    core = ov.Core()
    model = core.read_model(xml_path)
    output_names = set().union(*(output.get_names() for output in model.outputs))
    for operation in model.get_ordered_ops():
        if operation.get_type_name() in {"Parameter", "Result"}:
            continue
        for port in operation.outputs():
            if port.get_names() and not port.get_names() & output_names:
                port.get_tensor().set_names(set())
    staging = xml_path.with_name(f".{xml_path.stem}.partial.xml")
    ov.save_model(model, staging, compress_to_fp16=False)
    staging.with_suffix(".bin").replace(xml_path.with_suffix(".bin"))
    staging.replace(xml_path)


def export_budget_seconds() -> float:
    """Return the longest export to start without asking: ``ANOMALIB_RGI_EXPORT_BUDGET_S``, else 120 s.

    Raises:
        ValueError: If the variable is set to something other than a positive number.

    """
    text = os.environ.get("ANOMALIB_RGI_EXPORT_BUDGET_S", "")
    if not text:
        return DEFAULT_BUDGET_S
    try:
        budget = float(text)
    except ValueError:
        budget = -1.0
    if not budget > 0:
        msg = f"ANOMALIB_RGI_EXPORT_BUDGET_S must be a positive number of seconds, got {text!r}."
        raise ValueError(msg)
    return budget


def estimate_export_seconds(trace_with_steps: Callable[[int], GraphModule], steps: int) -> float:
    """Estimate the whole export's time from traces at one and two solver steps.

    The unrolled graph grows by the same operators with every step, so its size at ``steps`` follows
    exactly from the sizes at one and two; the time to trace it follows the size (timed on the
    second trace, the first pays one-time costs), and the ONNX export and the OpenVINO conversion
    take about :data:`EXPORT_OVER_TRACE` times the trace.

    Args:
        trace_with_steps (Callable[[int], GraphModule]): Traces the scoring with that many solver steps.
        steps (int): The steps the export will unroll.

    Returns:
        float: Estimated seconds.

    """
    one = len(trace_with_steps(1).graph.nodes)
    start = time.perf_counter()
    two = len(trace_with_steps(2).graph.nodes)
    seconds_per_node = (time.perf_counter() - start) / two
    nodes = one + (two - one) * max(steps - 1, 0)
    return EXPORT_OVER_TRACE * seconds_per_node * nodes


def refuse_slow_export(estimate: Callable[[], float], steps: int, budget_s: float) -> None:
    """Stop at once when the export would run past the budget, saying how long and what to run instead.

    A graph of at most :data:`DEPLOYABLE_STEPS` steps (the fast preset's) is built whatever it costs:
    there is no smaller deployable model to point to, so its estimate is not even made.

    Args:
        estimate (Callable[[], float]): Returns the estimated seconds (:func:`estimate_export_seconds`).
        steps (int): The steps the export will unroll.
        budget_s (float): The longest export to start (:func:`export_budget_seconds`).

    Raises:
        ExportTooSlowError: If the estimate is over ``budget_s`` for more than :data:`DEPLOYABLE_STEPS` steps.

    """
    if steps <= DEPLOYABLE_STEPS:
        return
    if (estimate_s := estimate()) <= budget_s:
        logger.info("Rgi: exporting %d unrolled solver steps, about %.0f s.", steps, estimate_s)
        return
    msg = (
        f"Exporting this model unrolls {steps} solver steps into one graph: about {estimate_s / 60:.0f} min on "
        f"this machine, over the {budget_s:.0f} s budget, so nothing was written. A deployable model unrolls "
        "few steps: fit the default (2 steps) on the same data and export that prior:\n"
        "    anomalib train --config configs/rgi.yaml --data.init_args.category <category>\n"
        "    anomalib export --model anomalib_rgi.Rgi --export_type openvino "
        "--ckpt_path results/Rgi/<data>/<category>/latest/weights/lightning/model.ckpt\n"
        "To build this graph anyway, set ANOMALIB_RGI_EXPORT_BUDGET_S above the estimate."
    )
    raise ExportTooSlowError(msg)


def export_unrolled_onnx(
    score: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
    example: torch.Tensor,
    onnx_path: Path,
    output_names: list[str],
    **kwargs: object,
) -> Path:
    """Trace ``score`` with its solver unrolled and write it as ONNX, logging each stage's time.

    Args:
        score (Callable): Maps one raw image to the exported outputs.
        example (torch.Tensor): Example input; its shape is baked into the graph.
        onnx_path (Path): Where the ONNX file goes.
        output_names (list[str]): Names of ``score``'s outputs.
        **kwargs: Passed to ``torch.onnx.export``.

    Returns:
        Path: ``onnx_path``.

    """
    start = time.perf_counter()
    graph = trace_unrolled(score, example).eval()
    logger.info(
        "Rgi: traced %d operators in %.0f s; writing ONNX.", len(graph.graph.nodes), time.perf_counter() - start
    )
    torch.onnx.export(
        graph,
        (example,),
        str(onnx_path),
        input_names=["input"],
        output_names=output_names,
        dynamo=True,
        **kwargs,
    )
    logger.info("Rgi: ONNX written in %.0f s in all.", time.perf_counter() - start)
    return onnx_path


class RgiExportMixin(ExportMixin):
    """Anomalib's export methods for Rgi: the ONNX and OpenVINO graphs carry the unrolled inversion."""

    def to_onnx(
        self,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        **kwargs: Any,  # noqa: ANN401  (passed to torch.onnx.export)
    ) -> Path:
        """Export scoring WITH the robust inversion: ``steps`` unrolled solver steps (see ``export.py``).

        The graph takes one raw image ``(1, C, input_size, input_size)`` in [0, 1] named ``input`` and
        returns anomalib's fields after the same post-processing, so ``OpenVINOInferencer`` runs it
        unchanged. An export that would take longer than ``ANOMALIB_RGI_EXPORT_BUDGET_S`` (120 s)
        stops at once and says what to export instead.

        Args:
            export_root (Path | str): Folder that receives ``onnx/<model_file_name>.onnx``.
            model_file_name (str): File name without extension.
            input_size (tuple[int, int] | None): Must equal the model's input size if given.
            **kwargs: Passed to ``torch.onnx.export``.

        Returns:
            Path: The ONNX file.

        Raises:
            RuntimeError: If the prior was never trained.
            NotImplementedError: For R-RGI (``finetune_steps > 0``).
            ValueError: If ``input_size`` differs from the model's input size.
            ExportTooSlowError: If the export would take longer than the budget.

        """
        self._refuse_unfitted_export()
        inversion = self.model.inversion
        if inversion["finetune_steps"] > 0:
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

        def trace_with_steps(steps: int) -> GraphModule:
            saved = inversion["steps"]
            inversion["steps"] = steps
            try:
                return trace_unrolled(score, example)
            finally:
                inversion["steps"] = saved

        budget = export_budget_seconds()
        steps = inversion["steps"]
        refuse_slow_export(lambda: estimate_export_seconds(trace_with_steps, steps), steps, budget)
        onnx_path = create_export_root(export_root, ExportType.ONNX) / f"{model_file_name}.onnx"
        return export_unrolled_onnx(score, example, onnx_path, output_names, **kwargs)

    def to_torch(self, export_root: Path | str, model_file_name: str = "model") -> Path:
        """Export as anomalib does (the whole module pickled, for ``TorchInferencer``), R-RGI included.

        PyTorch cannot pickle the critic's spectral normalisation: the file holds a critic with the
        normalised weights folded in (:meth:`~.networks.Critic.frozen`), which scores the same.

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
        at a time. ``INT8_ACQ`` keeps ``metric`` (anomalib's default: image F1) within ``max_drop`` on
        the datamodule's test images, through :class:`QuantizationMetric`.

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
        start = time.perf_counter()
        try:
            xml_path = super().to_openvino(
                export_root, model_file_name, input_size, compression_type, datamodule, metric, **kwargs
            )
        finally:
            if calibrated:
                datamodule.eval_batch_size = eval_batch_size
        keep_only_output_names(xml_path)
        logger.info("Rgi: OpenVINO model %s written, %.0f s in all.", xml_path, time.perf_counter() - start)
        return xml_path

    def _refuse_unfitted_export(self) -> None:
        if int(self.model.trained_steps) == 0:
            msg = "This Rgi model was never fitted: train it (or load a trained checkpoint) before exporting."
            raise RuntimeError(msg)
