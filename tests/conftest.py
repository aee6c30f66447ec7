"""Shared fixtures: tiny data sets and tiny generators so the suite runs in minutes on 2 CPU cores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.deploy import OpenVINOInferencer
from anomalib.engine import Engine
from lightning.pytorch import Callback, seed_everything
from torch import nn

from anomalib_rgi import Rgi, RgiTextures
from anomalib_rgi.data import build_category


class LinearGenerator(nn.Module):
    """A known, well-conditioned generator: G(z) = reshape(A z)."""

    def __init__(self, latent_dim: int = 12, shape: tuple[int, int, int] = (1, 12, 12), seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.shape = shape
        self.linear = nn.Linear(latent_dim, shape[0] * shape[1] * shape[2], bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn_like(self.linear.weight) * 0.3)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.linear(latent).view(latent.shape[0], *self.shape)


@pytest.fixture
def linear_generator() -> LinearGenerator:
    return LinearGenerator()


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("textures")
    build_category(root, "grass", crop_size=32, num_train=16, num_test_good=4, num_test_defective=4, seed=0)
    return root


TINY_PRIOR = {"latent_stride": 4, "latent_channels": 4, "base_channels": 4}
TINY_MODEL = {"image_size": 32, "prior": TINY_PRIOR, "max_epochs": 1, "steps": 3}
TINY_DATA = {"crop_size": 32, "num_train": 16, "num_test_good": 4, "num_test_defective": 4, "train_batch_size": 8}


def fit_tiny(
    root: Path,
    work: Path,
    *,
    ckpt_path: Path | None = None,
    callbacks: list[Callback] | None = None,
    eval_batch_size: int = 8,
    precision: str = "32-true",
    crop_size: int = TINY_DATA["crop_size"],
    **model_overrides: object,
) -> tuple[Engine, Rgi, RgiTextures]:
    """Fit a tiny, seeded Rgi on the tiny grass data (crops of ``crop_size``) through anomalib's Engine (CPU)."""
    seed_everything(0)
    data = {**TINY_DATA, "eval_batch_size": eval_batch_size, "crop_size": crop_size}
    datamodule = RgiTextures(root=root, category="grass", **data)
    model = Rgi(**{**TINY_MODEL, **model_overrides})
    engine = Engine(
        default_root_dir=work,
        logger=False,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks or [],
        precision=precision,
    )
    engine.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path)
    return engine, model, datamodule


def maps_in_openvino_and_torch(model: Rgi, work: Path, **inversion: object) -> tuple[np.ndarray, np.ndarray]:
    """Export ``model`` with these inversion settings (default: its own); its map from OpenVINO and from torch."""
    saved = dict(model.model.inversion)
    model.model.inversion.update(inversion)
    model.eval()
    try:
        path = model.to_openvino(export_root=work)
        inferencer = OpenVINOInferencer(path=path, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
        image = torch.rand(1, 3, 32, 32)
        reference = model(image)
        prediction = inferencer.predict(image.numpy())
    finally:
        model.model.inversion.clear()
        model.model.inversion.update(saved)
    return np.asarray(prediction.anomaly_map).squeeze(), reference.anomaly_map.squeeze().detach().numpy()
