"""Export the robust inversion itself: K unrolled Adam steps, forward and backward, as one graph.

ONNX and OpenVINO have no autograd, and ``torch.export`` cannot trace ``torch.autograd.grad``. But the
gradient of a network with respect to its INPUT is itself a network of forward operators. ``make_fx``
traces the whole scoring function (pre-processing, encoder start, K solver steps with their backward
passes, map, post-processing) into aten operators; the two backward operators our generator needs
and ONNX lacks are rewritten as forward ones:

- ``convolution_backward`` (input gradient only): a transposed convolution with the same weights;
- ``upsample_nearest2d_backward``: a sum over each block, i.e. ``avg_pool2d * block size``.

The traced graph is then exported with the dynamo ONNX exporter like any anomalib model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch._decomp import core_aten_decompositions
from torch.fx import GraphModule
from torch.fx.experimental.proxy_tensor import make_fx

aten = torch.ops.aten


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
