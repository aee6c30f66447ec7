"""Image reading that fails loudly: the host's readers silently clip 16-bit images and lose file names.

anomalib 2.7's ``read_image`` does ``Image.open(path).convert("RGB")``. For a 16-bit grey image
(PIL mode ``I;16`` / ``I``) that conversion CLIPS every value above 255, so a normal 16-bit photo
arrives almost white and trains a useless prior without any error. A truncated file raises PIL's
"image file is truncated" without saying which of thousands of files it was. And a mask whose size
differs from its image (a mis-paired or mis-exported file) is silently stretched by the resize.

:func:`read_image` and :func:`read_mask` are drop-in replacements (same signatures and results for
8-bit images) that scale 16-bit grey images by their full range, keep RGB(A)/grey/palette
images as anomalib does, and raise :class:`ImageReadError` naming the file. :func:`install` puts them
where anomalib's datasets look them up, and checks that every mask has its image's size.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2.functional import to_dtype, to_image
from torchvision.tv_tensors import Mask

# PIL opens 16-bit grey files as I;16* (or I, 32-bit, in older Pillow); all hold 0..65535.
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_SIXTEEN_BIT_MAX = 65535.0
_INSTALLED_MARK = "_anomalib_rgi_checked"


class ImageReadError(ValueError):
    """An image or mask file that cannot be used; the message names the file."""


def _open(path: str | Path, header_only: bool = False) -> Image.Image:
    try:
        image = Image.open(path)
        if not header_only:
            image.load()
    except (OSError, SyntaxError, ValueError) as error:
        size = Path(path).stat().st_size if Path(path).is_file() else None
        detail = "it is empty (0 bytes)" if size == 0 else f"{type(error).__name__}: {error}"
        msg = f"Cannot read image file {path}: {detail}. Replace or remove the file."
        raise ImageReadError(msg) from error
    return image


def _check_mode(image: Image.Image, path: str | Path) -> None:
    if image.mode == "F":
        msg = f"Image {path} holds floating-point pixels (mode F); save it as an 8- or 16-bit image."
        raise ImageReadError(msg)
    if image.mode in _SIXTEEN_BIT_MODES:
        low, high = image.getextrema()
        if low < 0 or high > _SIXTEEN_BIT_MAX:
            msg = f"Image {path} (mode {image.mode}) holds values outside 0..65535; save it as 8- or 16-bit."
            raise ImageReadError(msg)


def read_image(path: str | Path, as_tensor: bool = False) -> torch.Tensor | np.ndarray:
    """Read an image as RGB in [0, 1], like anomalib's ``read_image`` but full-range for 16-bit files.

    8-bit files (RGB, RGBA, grey, palette) give exactly anomalib's result.

    Args:
        path (str | Path): Image file.
        as_tensor (bool): Return a ``(3, H, W)`` float32 tensor instead of an ``(H, W, 3)`` array.

    Returns:
        torch.Tensor | np.ndarray: The image.

    Raises:
        ImageReadError: If the file is empty, truncated, not an image or of an unsupported mode.

    """
    image = _open(path)
    _check_mode(image, path)
    if image.mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(image, dtype=np.float64) / _SIXTEEN_BIT_MAX
        array = np.repeat(grey[..., None], 3, axis=-1)
        return torch.from_numpy(array.astype(np.float32)).permute(2, 0, 1).contiguous() if as_tensor else array
    image = image.convert("RGB")
    return to_dtype(to_image(image), torch.float32, scale=True) if as_tensor else np.array(image) / 255.0


def read_mask(path: str | Path, as_tensor: bool = False) -> torch.Tensor | np.ndarray:
    """Read a mask like anomalib's ``read_mask``, naming the file when it cannot be read.

    Args:
        path (str | Path): Mask file; any non-zero pixel is anomalous.
        as_tensor (bool): Return anomalib's ``Mask`` tensor instead of a grey array.

    Returns:
        torch.Tensor | np.ndarray: The mask.

    Raises:
        ImageReadError: If the file is empty, truncated or not an image.

    """
    image = _open(path)
    if as_tensor:
        return Mask(torch.from_numpy(np.asarray(image.convert("L")) > 0), dtype=torch.uint8)
    return np.asarray(image.convert("L"))


def check_mask_matches(image_path: str | Path, mask_path: str | Path) -> None:
    """Refuse a mask whose size differs from its image's (reads the two headers only).

    Raises:
        ImageReadError: Naming both files and both sizes.

    """
    with _open(image_path, header_only=True) as image, _open(mask_path, header_only=True) as mask:
        image_size, mask_size = image.size, mask.size
    if image_size != mask_size:
        msg = (
            f"Mask {mask_path} is {mask_size[0]}x{mask_size[1]} but its image {image_path} is "
            f"{image_size[0]}x{image_size[1]}: the mask does not belong to the image, or was saved at "
            "another resolution. Fix the pairing or resize the mask."
        )
        raise ImageReadError(msg)


def install() -> None:
    """Make anomalib's image datasets use these readers and check mask sizes. Idempotent."""
    from anomalib.data.datasets.base import image as datasets  # noqa: PLC0415

    datasets.read_image = read_image
    datasets.read_mask = read_mask
    getitem = datasets.AnomalibDataset.__getitem__
    if getattr(getitem, _INSTALLED_MARK, False):
        return

    @functools.wraps(getitem)
    def checked_getitem(self: Any, index: int) -> Any:  # noqa: ANN401
        sample = self.samples.iloc[index]
        mask_path = getattr(sample, "mask_path", "")
        if isinstance(mask_path, str | Path) and str(mask_path) and Path(mask_path).is_file():
            check_mask_matches(sample.image_path, mask_path)
        return getitem(self, index)

    setattr(checked_getitem, _INSTALLED_MARK, True)
    datasets.AnomalibDataset.__getitem__ = checked_getitem
