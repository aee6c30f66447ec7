"""Built-in, offline data set: MVTec-layout crops of scikit-image's texture photographs.

scikit-image ships three 512 x 512 grayscale texture photographs (brick, grass, gravel). Each becomes
one category: training crops come from the top 60% of the rows, test crops from the bottom 40%, so
no test pixel was ever seen in training. Half of the test crops receive a synthetic defect with an
exact ground-truth mask. Everything is deterministic for a seed.

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
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from scipy import ndimage

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CATEGORIES = ("brick", "grass", "gravel")
DEFECT_TYPES = ("scratch", "stain", "hole", "foreign")
TRAIN_ROW_FRACTION = 0.6
BUILD_VERSION = 1


def load_photograph(category: str) -> np.ndarray:
    """Return one of scikit-image's texture photographs as float32 in [0, 1].

    Args:
        category (str): ``"brick"``, ``"grass"`` or ``"gravel"``.

    Returns:
        np.ndarray: Grayscale image of shape ``(512, 512)``.

    Raises:
        ValueError: If ``category`` is not one of :data:`CATEGORIES`.

    """
    if category not in CATEGORIES:
        msg = f"Unknown texture category {category!r}; choose one of {CATEGORIES}."
        raise ValueError(msg)
    from skimage import data as skimage_data  # noqa: PLC0415  (heavy import, only needed when building)

    return getattr(skimage_data, category)().astype(np.float32) / 255.0


def _random_crop(photo: np.ndarray, rows: tuple[int, int], size: int, rng: np.random.Generator) -> np.ndarray:
    top = int(rng.integers(rows[0], rows[1] - size + 1))
    left = int(rng.integers(0, photo.shape[1] - size + 1))
    return photo[top : top + size, left : left + size].copy()


def _blob_mask(size: int, rng: np.random.Generator, min_radius: float, max_radius: float) -> np.ndarray:
    """Irregular blob: an ellipse whose boundary is perturbed by smooth noise."""
    radius_y, radius_x = rng.uniform(min_radius, max_radius, size=2)
    cy, cx = rng.uniform(max(radius_y, radius_x) + 2, size - max(radius_y, radius_x) - 2, size=2)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    noise = ndimage.gaussian_filter(rng.normal(size=(size, size)), sigma=size / 16)
    noise = noise / (np.abs(noise).max() + 1e-8)
    return (u / radius_x) ** 2 + (v / radius_y) ** 2 + 0.35 * noise < 1.0


def _scratch_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw a thin curved line across part of the image."""
    from skimage.draw import line  # noqa: PLC0415

    mask = np.zeros((size, size), dtype=bool)
    points = rng.uniform(0.15 * size, 0.85 * size, size=(2, 2))
    control = points.mean(axis=0) + rng.normal(scale=size / 8, size=2)
    t = np.linspace(0.0, 1.0, 24)[:, None]
    curve = (1 - t) ** 2 * points[0] + 2 * (1 - t) * t * control + t**2 * points[1]
    curve = np.clip(np.round(curve), 0, size - 1).astype(int)
    for (r0, c0), (r1, c1) in pairwise(curve):
        rr, cc = line(r0, c0, r1, c1)
        mask[rr, cc] = True
    width = int(rng.integers(1, 3))
    return ndimage.binary_dilation(mask, iterations=width)


def add_defect(
    crop: np.ndarray,
    defect: str,
    rng: np.random.Generator,
    foreign: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Plant one synthetic defect in a crop.

    Args:
        crop (np.ndarray): Grayscale crop in [0, 1].
        defect (str): One of :data:`DEFECT_TYPES`.
        rng (np.random.Generator): Random source.
        foreign (np.ndarray): A crop of the same size from ANOTHER photograph (for ``"foreign"``).

    Returns:
        tuple[np.ndarray, np.ndarray]: The defective image and its boolean mask; the mask marks
        exactly the pixels that were replaced.

    """
    size = crop.shape[0]
    image = crop.copy()
    if defect == "scratch":
        mask = _scratch_mask(size, rng)
        value = rng.choice([rng.uniform(0.0, 0.12), rng.uniform(0.88, 1.0)])
        image[mask] = value
    elif defect == "stain":
        mask = _blob_mask(size, rng, size / 14, size / 6)
        shift = rng.choice([-1.0, 1.0]) * rng.uniform(0.25, 0.4)
        smoothed = ndimage.gaussian_filter(crop, sigma=2.0)
        image[mask] = np.clip(0.5 * crop[mask] + 0.5 * smoothed[mask] + shift, 0.0, 1.0)
    elif defect == "hole":
        mask = _blob_mask(size, rng, size / 18, size / 8)
        image[mask] = rng.uniform(0.0, 0.08) + rng.normal(scale=0.01, size=int(mask.sum()))
    elif defect == "foreign":
        mask = _blob_mask(size, rng, size / 12, size / 6)
        image[mask] = foreign[mask]
    else:
        msg = f"Unknown defect type {defect!r}; choose one of {DEFECT_TYPES}."
        raise ValueError(msg)
    return np.clip(image, 0.0, 1.0), mask


def _save_gray(array: np.ndarray, path: Path) -> None:
    Image.fromarray(np.round(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8), mode="L").save(path)


def build_category(
    root: Path | str,
    category: str,
    crop_size: int = 128,
    num_train: int = 240,
    num_test_good: int = 40,
    num_test_defective: int = 40,
    seed: int = 0,
) -> Path:
    """Write one category of the built-in data set in MVTec AD layout.

    The category is written to a temporary folder and moved into place only when complete, so an
    interrupted build never leaves a half-written category behind. An existing, complete category
    built with the same settings is kept as it is.

    Args:
        root (Path | str): Folder that receives ``<category>/``.
        category (str): ``"brick"``, ``"grass"`` or ``"gravel"``.
        crop_size (int): Side of the square crops, in pixels.
        num_train (int): Number of defect-free training crops.
        num_test_good (int): Number of defect-free test crops.
        num_test_defective (int): Number of defective test crops (spread over :data:`DEFECT_TYPES`).
        seed (int): Seed of the random crops and defects.

    Returns:
        Path: The category folder.

    Raises:
        ValueError: If a size or count is out of range.

    """
    photo = load_photograph(category)
    split_row = int(photo.shape[0] * TRAIN_ROW_FRACTION)
    if not 16 <= crop_size <= photo.shape[0] - split_row:
        msg = f"crop_size must be between 16 and {photo.shape[0] - split_row} pixels, got {crop_size}."
        raise ValueError(msg)
    if min(num_train, num_test_good, num_test_defective) < 1:
        msg = "num_train, num_test_good and num_test_defective must all be at least 1."
        raise ValueError(msg)

    settings = {
        "version": BUILD_VERSION,
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

    rng = np.random.default_rng([seed, CATEGORIES.index(category)])
    others = [load_photograph(name) for name in CATEGORIES if name != category]
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{category}-", dir=root))
    try:
        train_dir = staging / "train" / "good"
        train_dir.mkdir(parents=True)
        for index in range(num_train):
            _save_gray(_random_crop(photo, (0, split_row), crop_size, rng), train_dir / f"{index:03d}.png")

        test_rows = (split_row, photo.shape[0])
        good_dir = staging / "test" / "good"
        good_dir.mkdir(parents=True)
        for index in range(num_test_good):
            _save_gray(_random_crop(photo, test_rows, crop_size, rng), good_dir / f"{index:03d}.png")

        counters = dict.fromkeys(DEFECT_TYPES, 0)
        for index in range(num_test_defective):
            defect = DEFECT_TYPES[index % len(DEFECT_TYPES)]
            crop = _random_crop(photo, test_rows, crop_size, rng)
            source = others[int(rng.integers(len(others)))]
            foreign = _random_crop(source, (0, source.shape[0]), crop_size, rng)
            image, mask = add_defect(crop, defect, rng, foreign)
            name = f"{counters[defect]:03d}"
            counters[defect] += 1
            (staging / "test" / defect).mkdir(parents=True, exist_ok=True)
            (staging / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
            _save_gray(image, staging / "test" / defect / f"{name}.png")
            _save_gray(mask.astype(np.float32), staging / "ground_truth" / defect / f"{name}_mask.png")

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

        datamodule = RgiTextures(root=data_root, category=category)
        datamodule.setup()
        dataset = datamodule.val_data if half == "validation" else datamodule.test_data
        chosen = {Path(path).resolve() for path in dataset.samples.image_path}
        paths = [path for path in paths if path.resolve() in chosen]
    if limit is not None:
        paths = paths[:: max(1, len(paths) // limit)][:limit]
    return paths


def split_defect_types(data_root: Path | str, category: str, half: str = "all") -> np.ndarray:
    """Each test crop's defect type (``"good"`` for defect-free ones), in :func:`load_test_split`'s order.

    Args:
        data_root (Path | str): Root of the built-in data (see :func:`split_image_paths`).
        category (str): One of :data:`CATEGORIES`.
        half (str): ``"all"``, ``"validation"`` or ``"test"`` (see :func:`split_image_paths`).

    Returns:
        np.ndarray: ``(N,)`` folder names of the crops.

    """
    return np.array([path.parent.name for path in split_image_paths(data_root, category, half=half)])


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
