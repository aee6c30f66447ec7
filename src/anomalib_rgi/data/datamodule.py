"""Anomalib datamodule of the built-in texture data set (built on first use, fully offline)."""

from __future__ import annotations

from pathlib import Path

from anomalib.data import MVTecAD
from anomalib.data.utils import TestSplitMode, ValSplitMode
from torchvision.transforms.v2 import Transform

from .textures import VERSIONS, build_category, categories


class RgiTextures(MVTecAD):
    """MVTec-layout crops of scikit-image's brick, grass and gravel photographs (and, in version 2, a colour fabric).

    ``prepare_data`` writes the category under ``root`` if it is not there yet (seconds; no
    download), then anomalib's MVTec AD reader loads it. Test crops carry synthetic defects with exact
    masks: in version 1 (the default) scratches, stains, holes and foreign material, hard-edged and
    high-contrast; version 2 adds translucent stains, soft burns, thin branching cracks, shading
    dents, smeared texture and particles, and the colour ``"fabric"`` category with hue shifts too.

    Args:
        root (Path | str): Folder of the built data set (version 2 is built in its ``v2`` subfolder).
        category (str): ``"brick"``, ``"grass"``, ``"gravel"``, or in version 2 ``"fabric"``.
        crop_size (int): Side of the crops in pixels.
        num_train (int): Defect-free training crops.
        num_test_good (int): Defect-free test crops.
        num_test_defective (int | None): Defective test crops (``None``: 40 in version 1, 12 per kind in version 2).
        build_seed (int): Seed of crops and defects.
        version (int): Version of the data set, 1 or 2.
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
        num_test_defective: int | None = None,
        build_seed: int = 0,
        version: int = 1,
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
        if version not in VERSIONS:
            msg = f"RgiTextures version must be one of {VERSIONS}, got {version!r}."
            raise ValueError(msg)
        if category not in categories(version):
            msg = (
                f"Unknown RgiTextures category {category!r} for version {version}; choose one of {categories(version)}."
            )
            raise ValueError(msg)
        super().__init__(
            root=Path(root) / "v2" if version == 2 else root,
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
            "version": version,
        }

    @property
    def name(self) -> str:
        """Name used for result folders."""
        return "RgiTextures"

    def prepare_data(self) -> None:
        """Build the category if it is missing (offline)."""
        build_category(self.root, self.category, **self.build_options)
