"""Score every validation and test image exactly once when a run is spread over several processes.

Under DDP, Lightning gives evaluation loaders a ``DistributedSampler`` that PADS the data so that every
process gets the same number of batches: with 9 test images on 2 processes one image is scored twice,
and anomalib's pooled metrics and learned thresholds count it twice. Lightning's own ``predict``
avoids this with an unrepeated sampler; anomalib's evaluation steps run no per-batch collective
operation, and torchmetrics gathers uneven states, so uneven evaluation is safe.
:func:`install` makes anomalib datamodules hand Lightning an unrepeated sampler for validation and
test (Lightning keeps a loader's own ``DistributedSampler``). Single-process runs are unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch.distributed as dist
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, SequentialSampler

_INSTALLED_MARK = "_anomalib_rgi_unrepeated"


def unrepeated(loader: DataLoader) -> DataLoader:
    """Shard an evaluation loader over the running processes without padding (no-op outside DDP).

    Args:
        loader (DataLoader): A sequential (unshuffled) evaluation loader.

    Returns:
        DataLoader: ``loader`` itself outside DDP or for other samplers; otherwise a copy whose
        sampler gives process ``r`` the images ``r, r + world_size, ...``.

    """
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if not distributed or not isinstance(loader, DataLoader) or not isinstance(loader.sampler, SequentialSampler):
        return loader
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=UnrepeatedDistributedSampler(loader.dataset, shuffle=False),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
    )


def _unrepeated_loader(make_loader: Callable[[Any], Any]) -> Callable[[Any], Any]:
    @functools.wraps(make_loader)
    def make_unrepeated_loader(self: Any) -> Any:  # noqa: ANN401
        return unrepeated(make_loader(self))

    setattr(make_unrepeated_loader, _INSTALLED_MARK, True)
    return make_unrepeated_loader


def install() -> None:
    """Make anomalib datamodules' validation and test loaders unrepeated under DDP. Idempotent."""
    from anomalib.data import AnomalibDataModule  # noqa: PLC0415

    for name in ("val_dataloader", "test_dataloader"):
        method = getattr(AnomalibDataModule, name)
        if not getattr(method, _INSTALLED_MARK, False):
            setattr(AnomalibDataModule, name, _unrepeated_loader(method))
