"""The corruptions the encoder is trained to look through."""

import torch

from anomalib_rgi.models.rgi.loss import corrupt


def _changed_box(before: torch.Tensor, after: torch.Tensor) -> tuple[int, int, int, int] | None:
    """Bounding box (top, bottom, left, right) of one image's changed pixels, None if unchanged."""
    changed = (before != after).any(dim=0)
    if not changed.any():
        return None
    rows, columns = torch.nonzero(changed, as_tuple=True)
    return int(rows.min()), int(rows.max()) + 1, int(columns.min()), int(columns.max()) + 1


def test_each_corrupted_image_changes_within_one_box_of_at_most_a_third_of_the_side():
    images = torch.rand(32, 3, 48, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    corrupted = corrupt(images, fraction=1.0, generator=torch.Generator().manual_seed(2))
    boxes = [_changed_box(before, after) for before, after in zip(images, corrupted, strict=True)]
    assert sum(box is not None for box in boxes) >= 30  # a constant grey may miss a small box's pixels, not all
    for box in filter(None, boxes):
        top, bottom, left, right = box
        assert bottom - top <= 48 // 3
        assert right - left <= 48 // 3
    assert corrupted.min() >= -1
    assert corrupted.max() <= 1


def test_the_unchosen_share_of_the_batch_is_untouched():
    images = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    assert torch.equal(corrupt(images, fraction=0.0), images)
    corrupted = corrupt(images, fraction=0.5, generator=torch.Generator().manual_seed(4))
    changed = sum(not torch.equal(before, after) for before, after in zip(images, corrupted, strict=True))
    assert 16 <= changed <= 48


def test_faint_corruptions_have_soft_edges():
    images = torch.rand(64, 3, 48, 48, generator=torch.Generator().manual_seed(5)) * 2 - 1
    gross = corrupt(images, fraction=1.0, generator=torch.Generator().manual_seed(6))
    faint = corrupt(images, fraction=1.0, generator=torch.Generator().manual_seed(6), faint=True)
    assert not torch.equal(gross, faint)
    assert faint.min() >= -1
    assert faint.max() <= 1

    # A box is at most a third of the side; a soft corruption's falloff reaches beyond one.
    def reach(before: torch.Tensor, after: torch.Tensor) -> int:
        changed = ((after - before).abs() > 1e-3).any(dim=0)
        rows, columns = torch.nonzero(changed, as_tuple=True)
        return int(max(rows.max() - rows.min(), columns.max() - columns.min())) + 1 if len(rows) else 0

    assert all(reach(before, after) <= 48 // 3 for before, after in zip(images, gross, strict=True))
    assert sum(reach(before, after) > 48 // 3 for before, after in zip(images, faint, strict=True)) >= 16
