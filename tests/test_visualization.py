"""The result pictures: one labelled panel per view, the ground truth only where there is one."""

import torch
from anomalib.data import ImageBatch

from anomalib_rgi.visualization import result_panels


def _scored_batch(gt_mask: torch.Tensor | None) -> ImageBatch:
    generator = torch.Generator().manual_seed(0)
    return ImageBatch(
        image=torch.rand(2, 3, 32, 32, generator=generator),
        anomaly_map=torch.rand(2, 1, 32, 32, generator=generator),
        pred_mask=torch.rand(2, 32, 32, generator=generator) > 0.9,
        gt_mask=gt_mask,
    )


def test_pictures_without_masks_leave_out_the_ground_truth_panel() -> None:
    with_truth = result_panels(_scored_batch(torch.zeros(2, 32, 32, dtype=torch.bool)), index=1)
    without_truth = result_panels(_scored_batch(None), index=1)
    assert with_truth.height == without_truth.height
    panel_width = with_truth.width - without_truth.width
    assert panel_width >= 256, "a picture without a mask should be one panel narrower"
    assert without_truth.width >= 4 * 256, "input, restored image, map and predicted mask should all be there"
