"""Built-in, offline data set: MVTec-layout crops of texture images with synthetic defects.

scikit-image ships three 512 x 512 grayscale texture photographs (brick, grass, gravel); version 2
adds a procedural colour fabric (:func:`fabric`). Each becomes one category: training crops come from
the top 60% of the rows, test crops from the bottom 40%, so no test pixel was ever seen in training.
Test crops receive synthetic defects with exact ground-truth masks (:mod:`.defects`): version 1 has
four hard-edged, high-contrast kinds; version 2 ten, faint and soft ones among them, and on the colour
category also hue shifts. Everything is deterministic for a seed.

Layout written (the MVTec AD convention, so anomalib's ``MVTecAD`` reader loads it)::

    root/<category>/train/good/000.png
    root/<category>/test/good/000.png
    root/<category>/test/<defect>/000.png
    root/<category>/ground_truth/<defect>/000_mask.png
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from scipy import ndimage

from .defects import COLOUR_DEFECT_TYPES, DEFECT_TYPES_V1, DEFECT_TYPES_V2, add_defect

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CATEGORIES = ("brick", "grass", "gravel")
COLOUR_CATEGORIES = ("fabric",)
DEFECT_TYPES = DEFECT_TYPES_V1
TRAIN_ROW_FRACTION = 0.6
VERSIONS = (1, 2)
CROPS_PER_KIND_V2 = 12


def categories(version: int = 1) -> tuple[str, ...]:
    """Return the categories of a version of the data set (version 2 adds the colour fabric)."""
    return CATEGORIES if version == 1 else (*CATEGORIES, *COLOUR_CATEGORIES)


def defect_types(category: str, version: int = 1) -> tuple[str, ...]:
    """Return the defect kinds a category has in a version of the data set."""
    if version == 1:
        return DEFECT_TYPES_V1
    return COLOUR_DEFECT_TYPES if category in COLOUR_CATEGORIES else DEFECT_TYPES_V2


def fabric(size: int = 512) -> np.ndarray:
    """Return a procedural plain-weave fabric in colour, ``(size, size, 3)`` float32 in [0, 1].

    Navy warp and ochre weft threads 4 px wide, each thread with its own shade and slow slubs along
    it, a rounded thread profile and fibre noise: a textile with the colour a hue shift can change.
    """
    rng = np.random.default_rng(20261206)
    width = 4
    yy, xx = np.mgrid[0:size, 0:size]
    warp_thread, weft_thread = xx // width, yy // width
    over = (warp_thread + weft_thread) % 2 == 0
    threads = size // width + 1
    warp_colour = np.array([0.16, 0.24, 0.52]) * rng.uniform(0.85, 1.15, size=(threads, 1))
    weft_colour = np.array([0.78, 0.60, 0.28]) * rng.uniform(0.85, 1.15, size=(threads, 1))
    slubs = 1.0 + 0.12 * ndimage.gaussian_filter(rng.normal(size=(2, threads, size)), sigma=(0, 0, 12)) * 4
    profile = 0.8 + 0.2 * np.cos(np.pi * ((np.arange(size) % width) - (width - 1) / 2) / width)
    warp = warp_colour[warp_thread] * (profile[xx] * slubs[0][warp_thread, yy])[..., None]
    weft = weft_colour[weft_thread] * (profile[yy] * slubs[1][weft_thread, xx])[..., None]
    image = np.where(over[..., None], warp, weft) + rng.normal(scale=0.025, size=(size, size, 3))
    return np.clip(ndimage.gaussian_filter(image, sigma=(0.6, 0.6, 0)), 0.0, 1.0).astype(np.float32)


def load_photograph(category: str) -> np.ndarray:
    """Return one of scikit-image's texture photographs as float32 in [0, 1].

    Args:
        category (str): ``"brick"``, ``"grass"``, ``"gravel"`` or the colour ``"fabric"`` (procedural).

    Returns:
        np.ndarray: Grayscale image ``(512, 512)``; for ``"fabric"`` colour, ``(512, 512, 3)``.

    Raises:
        ValueError: If ``category`` is not one of :func:`categories` of version 2.

    """
    if category in COLOUR_CATEGORIES:
        return fabric()
    if category not in CATEGORIES:
        msg = f"Unknown texture category {category!r}; choose one of {categories(2)}."
        raise ValueError(msg)
    from skimage import data as skimage_data  # noqa: PLC0415  (heavy import, only needed when building)

    return getattr(skimage_data, category)().astype(np.float32) / 255.0


def _random_crop(photo: np.ndarray, rows: tuple[int, int], size: int, rng: np.random.Generator) -> np.ndarray:
    top = int(rng.integers(rows[0], rows[1] - size + 1))
    left = int(rng.integers(0, photo.shape[1] - size + 1))
    return photo[top : top + size, left : left + size].copy()


def _save(array: np.ndarray, path: Path) -> None:
    """Write a grey ``(H, W)`` or colour ``(H, W, 3)`` image in [0, 1] as 8-bit PNG."""
    pixels = np.round(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)
    Image.fromarray(pixels, mode="L" if array.ndim == 2 else "RGB").save(path)


def build_category(
    root: Path | str,
    category: str,
    crop_size: int = 128,
    num_train: int = 240,
    num_test_good: int = 40,
    num_test_defective: int | None = None,
    seed: int = 0,
    version: int = 1,
) -> Path:
    """Write one category of the built-in data set in MVTec AD layout.

    The category is written to a temporary folder and moved into place only when complete, so an
    interrupted build never leaves a half-written category behind. An existing, complete category
    built with the same settings is kept as it is.

    Args:
        root (Path | str): Folder that receives ``<category>/``.
        category (str): One of :func:`categories` of ``version``.
        crop_size (int): Side of the square crops, in pixels.
        num_train (int): Number of defect-free training crops.
        num_test_good (int): Number of defect-free test crops.
        num_test_defective (int | None): Number of defective test crops, spread evenly over the kinds of
            :func:`defect_types` (``None``: 40 in version 1, 12 per kind in version 2).
        seed (int): Seed of the random crops and defects.
        version (int): 1: four hard-edged kinds on the grey photographs (the data of every figure up
            to 2026-12-06); 2: ten kinds, faint and soft ones among them, and the colour fabric.

    Returns:
        Path: The category folder.

    Raises:
        ValueError: If a size or count is out of range.

    """
    if version not in VERSIONS:
        msg = f"version must be one of {VERSIONS}, got {version!r}."
        raise ValueError(msg)
    if category not in categories(version):
        msg = f"Unknown category {category!r} for version {version}; choose one of {categories(version)}."
        raise ValueError(msg)
    kinds = defect_types(category, version)
    if num_test_defective is None:
        num_test_defective = 40 if version == 1 else CROPS_PER_KIND_V2 * len(kinds)
    photo = load_photograph(category)
    split_row = int(photo.shape[0] * TRAIN_ROW_FRACTION)
    if not 16 <= crop_size <= photo.shape[0] - split_row:
        msg = f"crop_size must be between 16 and {photo.shape[0] - split_row} pixels, got {crop_size}."
        raise ValueError(msg)
    if min(num_train, num_test_good, num_test_defective) < 1:
        msg = "num_train, num_test_good and num_test_defective must all be at least 1."
        raise ValueError(msg)

    settings = {
        "version": version,
        "category": category,
        "crop_size": crop_size,
        "num_train": num_train,
        "num_test_good": num_test_good,
        "num_test_defective": num_test_defective,
        "seed": seed,
    }
    root = Path(root)
    target = root / category
    stamp = target / "build.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == settings:
        return target
    if target.exists():
        msg = f"{target} exists but was not built with these settings ({settings}). Remove it or choose another root."
        raise FileExistsError(msg)

    rng = np.random.default_rng([seed, categories(version).index(category)])
    others = [load_photograph(name) for name in CATEGORIES if name != category]
    if photo.ndim == 3:  # foreign material on a colour part: the grey photographs, as RGB
        others = [np.repeat(other[..., None], 3, axis=2) for other in others]
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{category}-", dir=root))
    try:
        train_dir = staging / "train" / "good"
        train_dir.mkdir(parents=True)
        for index in range(num_train):
            _save(_random_crop(photo, (0, split_row), crop_size, rng), train_dir / f"{index:03d}.png")

        test_rows = (split_row, photo.shape[0])
        good_dir = staging / "test" / "good"
        good_dir.mkdir(parents=True)
        for index in range(num_test_good):
            _save(_random_crop(photo, test_rows, crop_size, rng), good_dir / f"{index:03d}.png")

        counters = dict.fromkeys(kinds, 0)
        for index in range(num_test_defective):
            defect = kinds[index % len(kinds)]
            crop = _random_crop(photo, test_rows, crop_size, rng)
            source = others[int(rng.integers(len(others)))]
            foreign = _random_crop(source, (0, source.shape[0]), crop_size, rng)
            image, mask = add_defect(crop, defect, rng, foreign)
            name = f"{counters[defect]:03d}"
            counters[defect] += 1
            (staging / "test" / defect).mkdir(parents=True, exist_ok=True)
            (staging / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
            _save(image, staging / "test" / defect / f"{name}.png")
            _save(mask.astype(np.float32), staging / "ground_truth" / defect / f"{name}_mask.png")

        (staging / "build.json").write_text(json.dumps(settings, indent=2))
        try:
            os.replace(staging, target)
        except OSError:
            # Another process finished the same build first; keep its copy if it matches.
            if not (stamp.is_file() and json.loads(stamp.read_text()) == settings):
                raise
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("Built %s (%d train, %d test crops).", target, num_train, num_test_good + num_test_defective)
    return target


def train_image_paths(data_root: Path | str, category: str, limit: int | None = None) -> list[Path]:
    """List a category's defect-free training crops, sorted (the first ``limit`` of them).

    Args:
        data_root (Path | str): Root of the built-in data; a missing category is built with the defaults.
        category (str): One of :data:`CATEGORIES`.
        limit (int | None): Keep only the first ``limit`` crops.

    Returns:
        list[Path]: Paths of the training crops.

    """
    root = Path(data_root) / category
    if not (root / "build.json").is_file():
        root = build_category(data_root, category)
    return sorted((root / "train" / "good").glob("*.png"))[:limit]


def split_image_paths(data_root: Path | str, category: str, limit: int | None = None, half: str = "all") -> list[Path]:
    """List the test crops :func:`load_test_split` reads, in its order (``path.parent.name``: the defect type).

    Args:
        data_root (Path | str): Root of the built-in data; a category already there is read as it was
            built (its crop size, counts), a missing one is built with the defaults.
        category (str): One of :data:`CATEGORIES`.
        limit (int | None): Keep every k-th image so that at most ``limit`` remain (good and defective alike).
        half (str): ``"all"`` test crops, or only the ``"validation"`` or ``"test"`` half of the split
            :class:`~anomalib_rgi.RgiTextures` makes by default, so that a setting chosen on the
            validation half can be reported on crops it was not chosen on.

    Returns:
        list[Path]: Paths of the chosen test crops, sorted.

    Raises:
        ValueError: If ``half`` is not one of ``"all"``, ``"validation"``, ``"test"``.

    """
    if half not in {"all", "validation", "test"}:
        msg = f'half must be "all", "validation" or "test", got {half!r}.'
        raise ValueError(msg)
    root = Path(data_root) / category
    if not (root / "build.json").is_file():
        root = build_category(data_root, category)
    paths = sorted((root / "test").glob("*/*.png"))
    if half != "all":
        from .datamodule import RgiTextures  # noqa: PLC0415  (imports anomalib; only needed for a half)

        # Read as built: a version-2 category (the fabric) is unknown to version 1's datamodule.
        version = json.loads((root / "build.json").read_text()).get("version", 1)
        datamodule = RgiTextures(root=data_root, category=category, version=version)
        datamodule.root = Path(data_root)  # this folder itself, not its v2 subfolder
        datamodule.setup()
        dataset = datamodule.val_data if half == "validation" else datamodule.test_data
        chosen = {Path(path).resolve() for path in dataset.samples.image_path}
        paths = [path for path in paths if path.resolve() in chosen]
    if limit is not None:
        paths = paths[:: max(1, len(paths) // limit)][:limit]
    return paths


def load_test_split(
    data_root: Path | str, category: str, limit: int | None = None, half: str = "all"
) -> tuple[torch.Tensor, np.ndarray]:
    """Read a category's test crops (RGB, [0, 1]) and masks, for scripts that bypass anomalib.

    Args:
        data_root (Path | str): Root of the built-in data (see :func:`split_image_paths`).
        category (str): One of :data:`CATEGORIES`.
        limit (int | None): At most this many crops, every k-th.
        half (str): ``"all"``, ``"validation"`` or ``"test"`` (see :func:`split_image_paths`).

    Returns:
        tuple[torch.Tensor, np.ndarray]: ``(N, 3, H, W)`` images and ``(N, H, W)`` boolean masks.

    Raises:
        ValueError: If ``half`` is not one of ``"all"``, ``"validation"``, ``"test"``.

    """
    import torch  # noqa: PLC0415  (the builder itself does not need torch)

    paths = split_image_paths(data_root, category, limit, half)
    images = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in paths])
    masks = [
        np.zeros(images.shape[-2:], dtype=bool)
        if p.parent.name == "good"
        else np.array(Image.open(p.parents[2] / "ground_truth" / p.parent.name / f"{p.stem}_mask.png")) > 127
        for p in paths
    ]
    return images.float() / 255, np.stack(masks)
