"""Anomalib datamodule of the built-in texture data set (built on first use, fully offline)."""

from __future__ import annotations

from pathlib import Path

from anomalib.data import MVTecAD
from anomalib.data.utils import TestSplitMode, ValSplitMode
from torchvision.transforms.v2 import Transform

from .textures import CATEGORIES, build_category


class RgiTextures(MVTecAD):
    """MVTec-layout crops of scikit-image's brick, grass and gravel photographs.

    ``prepare_data`` writes the category under ``root`` if it is not there yet (about a second; no
    download), then anomalib's MVTec AD reader loads it. Half of the test crops carry a synthetic
    defect (scratch, stain, hole or foreign material) with an exact mask.

    Args:
        root (Path | str): Folder of the built data set.
        category (str): ``"brick"``, ``"grass"`` or ``"gravel"``.
        crop_size (int): Side of the crops in pixels.
        num_train (int): Defect-free training crops.
        num_test_good (int): Defect-free test crops.
        num_test_defective (int): Defective test crops.
        build_seed (int): Seed of crops and defects.
        train_batch_size (int): Training batch size.
        eval_batch_size (int): Validation/test batch size.
        num_workers (int): Data loader workers.
        train_augmentations (Transform | None): Training augmentations.
        val_augmentations (Transform | None): Validation augmentations.
        test_augmentations (Transform | None): Test augmentations.
        augmentations (Transform | None): Augmentations for every stage without its own.
        test_split_mode (TestSplitMode | str): How the test set is made.
        test_split_ratio (float): Test share when split from training data.
        val_split_mode (ValSplitMode | str): How the validation set is made; by default half of the
            test crops (stratified), so that thresholds are learned on images the test never sees.
        val_split_ratio (float): Validation share.
        seed (int | None): Seed of the validation split.

    """

    def __init__(
        self,
        root: Path | str = "./datasets/rgi_textures",
        category: str = "brick",
        crop_size: int = 128,
        num_train: int = 240,
        num_test_good: int = 40,
        num_test_defective: int = 40,
        build_seed: int = 0,
        train_batch_size: int = 16,
        eval_batch_size: int = 40,
        num_workers: int = 0,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        test_split_mode: TestSplitMode | str = TestSplitMode.FROM_DIR,
        test_split_ratio: float = 0.2,
        val_split_mode: ValSplitMode | str = ValSplitMode.FROM_TEST,
        val_split_ratio: float = 0.5,
        seed: int | None = 0,
    ) -> None:
        if category not in CATEGORIES:
            msg = f"Unknown RgiTextures category {category!r}; choose one of {CATEGORIES}."
            raise ValueError(msg)
        super().__init__(
            root=root,
            category=category,
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            test_split_mode=test_split_mode,
            test_split_ratio=test_split_ratio,
            val_split_mode=val_split_mode,
            val_split_ratio=val_split_ratio,
            seed=seed,
        )
        self.build_options = {
            "crop_size": crop_size,
            "num_train": num_train,
            "num_test_good": num_test_good,
            "num_test_defective": num_test_defective,
            "seed": build_seed,
        }

    @property
    def name(self) -> str:
        """Name used for result folders."""
        return "RgiTextures"

    def prepare_data(self) -> None:
        """Build the category if it is missing (offline)."""
        build_category(self.root, self.category, **self.build_options)
