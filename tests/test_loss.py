"""The corruptions the encoder is trained to look through."""

import pytest
import torch

from anomalib_rgi import Rgi
from anomalib_rgi.models.rgi.loss import CORRUPTIONS, corrupt


def _changed_boxes(original: torch.Tensor, corrupted: torch.Tensor) -> list[tuple[int, int, int, int] | None]:
    """Bounding box (top, bottom, left, right) of each image's changed pixels, None if unchanged."""
    boxes = []
    for before, after in zip(original, corrupted, strict=True):
        changed = (before != after).any(dim=0)
        if not changed.any():
            boxes.append(None)
            continue
        rows, columns = torch.nonzero(changed, as_tuple=True)
        boxes.append((int(rows.min()), int(rows.max()) + 1, int(columns.min()), int(columns.max()) + 1))
    return boxes


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_each_kind_changes_one_box_and_nothing_else(kind):
    images = torch.rand(16, 3, 48, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    corrupted = corrupt(images, fraction=1.0, generator=torch.Generator().manual_seed(2), kinds=(kind,))
    boxes = _changed_boxes(images, corrupted)
    assert sum(box is not None for box in boxes) >= 14  # a constant may equal a pixel by chance, not a whole box
    for image, after, box in zip(images, corrupted, boxes, strict=True):
        if box is None:
            continue
        top, bottom, left, right = box
        outside = torch.ones(48, 48, dtype=torch.bool)
        outside[top:bottom, left:right] = False
        assert torch.equal(image[:, outside], after[:, outside])
        assert bottom - top <= 48 // 3
        assert right - left <= 48 // 3
    assert corrupted.min() >= -1
    assert corrupted.max() <= 1


def test_rescaled_box_is_a_smoother_texture_than_the_image():
    images = torch.rand(16, 1, 48, 48, generator=torch.Generator().manual_seed(3)) * 2 - 1
    corrupted = corrupt(images, fraction=1.0, generator=torch.Generator().manual_seed(4), kinds=("rescaled",))
    for image, after, box in zip(images, corrupted, _changed_boxes(images, corrupted), strict=True):
        top, bottom, left, right = box
        if right - left < 4:
            continue
        planted, own = after[0, top:bottom, left:right], image[0, top:bottom, left:right]
        # Upsampling by 2-4 makes neighbouring pixels alike; white noise has no such correlation.
        assert (planted[:, 1:] - planted[:, :-1]).abs().mean() < 0.6 * (own[:, 1:] - own[:, :-1]).abs().mean()


def test_nothing_changes_at_fraction_zero():
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    assert torch.equal(corrupt(images, fraction=0.0, kinds=CORRUPTIONS), images)


@pytest.mark.parametrize("kinds", [(), ("constant", "scribble")])
def test_unknown_or_no_corruption_kind_is_refused(kinds):
    with pytest.raises(ValueError, match="Corruption kinds must be"):
        corrupt(torch.zeros(2, 3, 16, 16), kinds=kinds)
    with pytest.raises(ValueError, match="Corruption kinds must be"):
        Rgi(corruptions=kinds)
