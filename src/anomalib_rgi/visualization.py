"""Pictures of RGI's results: input, restored image, anomaly map, predicted and true masks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from anomalib.utils.path import generate_output_filename
from anomalib.visualization import ImageVisualizer
from anomalib.visualization.image.functional import (
    add_text_to_image,
    create_image_grid,
    visualize_anomaly_map,
    visualize_image,
    visualize_mask,
)
from PIL import Image

if TYPE_CHECKING:
    from anomalib.data import ImageBatch
    from anomalib.models import AnomalibModule
    from lightning.pytorch import Trainer

PANEL_SIZE = (256, 256)


def _mask_panel(mask: torch.Tensor | None) -> Image.Image:
    if mask is None:
        return Image.new("RGB", PANEL_SIZE)
    return visualize_mask(mask.squeeze().float(), mode="binary").convert("RGB")


def result_panels(batch: ImageBatch, index: int) -> Image.Image:
    """One row of labelled panels for image ``index`` of a scored batch.

    The ground-truth panel is shown only when the batch has masks. The anomaly map is shown on the
    post-processor's common scale (no per-image normalisation), so colours mean the same in every
    picture.
    """
    restored = getattr(batch, "restored", None)
    panels = [
        ("input", visualize_image(batch.image[index])),
        ("restored G(z)", visualize_image(restored[index]) if restored is not None else Image.new("RGB", PANEL_SIZE)),
        ("anomaly map", visualize_anomaly_map(batch.anomaly_map[index].squeeze().clamp(0, 1), normalize=False)),
        ("predicted mask", _mask_panel(None if batch.pred_mask is None else batch.pred_mask[index])),
    ]
    # Without a mask (``anomalib predict``), a black panel would read as "no defect here".
    if batch.gt_mask is not None:
        panels.append(("ground truth", _mask_panel(batch.gt_mask[index])))
    labelled = [add_text_to_image(panel.convert("RGB").resize(PANEL_SIZE), label) for label, panel in panels]
    return create_image_grid(labelled, nrow=len(labelled))


class RgiVisualizer(ImageVisualizer):
    """Writes one picture per test/predict image with the restored image beside the maps."""

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: AnomalibModule,
        outputs: ImageBatch,
        batch: ImageBatch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Save the panels of every image of the batch under ``<root>/images``."""
        del pl_module, outputs, batch_idx, dataloader_idx
        if self.output_dir is None:
            self.output_dir = f"{trainer.default_root_dir}/images"
        datamodule = getattr(trainer, "datamodule", None)
        for index in range(batch.image.shape[0]):
            path = batch.image_path[index] if batch.image_path is not None else f"image_{index}.png"
            filename = generate_output_filename(
                input_path=path,
                output_path=self.output_dir,
                dataset_name=getattr(datamodule, "name", None),
                category=getattr(datamodule, "category", None),
            )
            result_panels(batch, index).save(filename)
