"""Small file helpers shared by the command-line tools: image folders in, result folders out."""

from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


def list_images(folder: Path) -> list[Path]:
    """Image files of ``folder``, sorted.

    Raises:
        FileNotFoundError: If the folder is missing or holds no images.

    """
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not paths:
        msg = f"No images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}."
        raise FileNotFoundError(msg)
    return paths


def prepare_output(folder: Path, overwrite: bool) -> None:
    """Create ``folder``; refuse one that already holds results unless ``overwrite``.

    Raises:
        FileExistsError: If results would be overwritten silently.

    """
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        msg = f"{folder} already holds results; choose a new folder or pass --overwrite."
        raise FileExistsError(msg)
    folder.mkdir(parents=True, exist_ok=True)
