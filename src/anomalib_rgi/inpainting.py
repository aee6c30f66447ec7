"""Mask-free inpainting: restore corrupted images with a trained Rgi prior and say where they were hit.

    from anomalib_rgi import Rgi
    from anomalib_rgi.inpainting import restore
    result = restore(Rgi.load_from_checkpoint("model.ckpt"), ["a.png", "b.png"])
    result.restored, result.masks, result.losses

The command ``rgi-restore`` (installed with the package) does the same for a folder.
Corruption generators for experiments (``central_block``, ``random_pixels``, ``irregular_strokes``,
and the two fills) live here too.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from anomalib_rgi.io import list_images, prepare_output
from anomalib_rgi.models.rgi import Rgi
from anomalib_rgi.models.rgi.inversion import MASK_SOLVERS

# Chosen on tuning crops the inpainting table never uses (docs/method.md, "Inpainting"): the best
# lam is 0.05 on brick and 0.2 on grass and gravel, whose normal
# residuals are larger; 0.1 loses at most 0.44 dB (mean over three corruptions) on any of them.
RESTORATION_SETTINGS: dict[str, float | str] = {"mask_solver": "closed_form", "lam": 0.1}


@dataclass
class Restoration:
    """Result of :func:`restore`; images in [0, 1].

    Attributes:
        restored (torch.Tensor): ``G(z)``, the restored images, ``(N, C, H, W)``.
        masks (torch.Tensor): ``mean_c |M|``, where the image was found corrupted, ``(N, 1, H, W)``.
        losses (torch.Tensor): Final RGI objective per image, ``(N,)``.

    """

    restored: torch.Tensor
    masks: torch.Tensor
    losses: torch.Tensor


def load_images(paths: Sequence[str | Path], size: int, channels: int = 3) -> torch.Tensor:
    """Read image files as ``(N, C, size, size)`` in [0, 1] (resized; grayscale becomes RGB).

    Raises:
        ValueError: Naming a file that cannot be read.

    """
    images = []
    for path in paths:
        try:
            with Image.open(path) as opened:
                picture = opened.convert("RGB" if channels == 3 else "L").resize((size, size), Image.BILINEAR)
        except (UnidentifiedImageError, OSError) as error:
            msg = f"Cannot read image {path}: {error}"
            raise ValueError(msg) from error
        array = np.asarray(picture, dtype=np.float32) / 255.0
        images.append(torch.from_numpy(array.reshape(size, size, channels)).permute(2, 0, 1))
    return torch.stack(images)


def restore(
    model: Rgi,
    images: torch.Tensor | Sequence[str | Path],
    batch_size: int = 16,
    **settings: float | str,
) -> Restoration:
    """Restore images with RGI (or R-RGI, with ``finetune_steps > 0``), no mask given.

    A checkpoint's own inversion settings are those it scores anomalies with: Adam's mask, starting
    at 0, lets the latent chase a large corruption before the mask has grown. Restoration therefore
    uses :data:`RESTORATION_SETTINGS` (the closed-form mask) over them unless told otherwise.

    Args:
        model (Rgi): A trained model.
        images (torch.Tensor | Sequence[str | Path]): ``(N, C, H, W)`` in [0, 1] of the model's input size,
            or image files (resized to it).
        batch_size (int): Images inverted at once.
        **settings: Inversion settings for this call (keys of ``model.model.inversion``), over
            :data:`RESTORATION_SETTINGS` and the model's; the model itself is left unchanged.

    Returns:
        Restoration: Restored images, masks and losses.

    Raises:
        ValueError: If the model was never trained, a setting is unknown, or images have the wrong
            shape or bad values.

    """
    if int(model.model.trained_steps) == 0:
        msg = "This Rgi model was never fitted; load a trained checkpoint before restoring images."
        raise ValueError(msg)
    if not isinstance(images, torch.Tensor):
        images = load_images(images, model.model.input_size, model.model.image_channels)
    model.eval()
    chosen = {**RESTORATION_SETTINGS, **settings}
    parts = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(model.device)
        result = model.model.invert(batch, **chosen)
        untile = model.model.untile  # per tile -> per image, with tiling (input_size > image_size)
        parts.append(
            (
                untile(((result.restored + 1.0) / 2.0).clamp(0, 1)).cpu(),
                untile(result.mask.abs().mean(dim=1, keepdim=True)).cpu(),
                result.loss.view(batch.shape[0], -1).sum(dim=1).cpu(),
            )
        )
    restored, masks, losses = (torch.cat(column) for column in zip(*parts, strict=True))
    return Restoration(restored=restored, masks=masks, losses=losses)


def _to_pil(image: torch.Tensor) -> Image.Image:
    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def restore_folder(
    checkpoint: Path,
    input_dir: Path,
    output_dir: Path,
    overwrite: bool = False,
    **settings: float | str,
) -> int:
    """Restore every image of ``input_dir``; write restored images, masks and side-by-side pictures.

    ``settings`` are passed to :func:`restore`.

    Returns:
        int: Number of images restored.

    """
    paths = list_images(input_dir)
    model = Rgi.load_from_checkpoint(checkpoint)
    prepare_output(output_dir, overwrite)
    images = load_images(paths, model.model.input_size, model.model.image_channels)
    result = restore(model, images, **settings)
    for folder in ("restored", "masks", "side_by_side"):
        (output_dir / folder).mkdir(exist_ok=True)
    scale = result.masks.amax().clamp_min(1e-12)
    for index, path in enumerate(paths):
        mask = (result.masks[index] / scale).expand(3, -1, -1)
        _to_pil(result.restored[index]).save(output_dir / "restored" / f"{path.stem}.png")
        _to_pil(mask[:1]).save(output_dir / "masks" / f"{path.stem}.png")
        side = torch.cat([images[index], result.restored[index], mask], dim=2)
        _to_pil(side).save(output_dir / "side_by_side" / f"{path.stem}.png")
    return len(paths)


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``rgi-restore`` (``--help`` lists its arguments and options)."""
    parser = argparse.ArgumentParser(
        prog="rgi-restore",
        description="Restore a folder of corrupted images with a trained Rgi checkpoint (no mask needed).",
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("input_dir", type=Path)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--overwrite", action="store_true", help="replace results already in OUTPUT_DIR")
    parser.add_argument(
        "--mask-solver",
        choices=[solver for solver in MASK_SOLVERS if solver != "given"],
        help=f"default {RESTORATION_SETTINGS['mask_solver']}; 'adam': the authors' (and scoring's) solver",
    )
    parser.add_argument("--lam", type=float, help=f"mask sparsity weight, default {RESTORATION_SETTINGS['lam']}")
    parser.add_argument("--steps", type=int, help="inversion steps, default: the checkpoint's")
    parser.add_argument("--finetune-steps", type=int, help="R-RGI fine-tuning steps, default: the checkpoint's")
    args = parser.parse_args(argv)
    names = ("mask_solver", "lam", "steps", "finetune_steps")
    settings = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    try:
        count = restore_folder(args.checkpoint, args.input_dir, args.output_dir, overwrite=args.overwrite, **settings)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        parser.exit(2, f"rgi-restore: error: {error}\n")
    print(f"Restored {count} images into {args.output_dir}")


def central_block(size: int, fraction: float = 0.25) -> torch.Tensor:
    """Boolean mask of a centred square covering ``fraction`` of the image area (the paper's case i)."""
    side = round(size * math.sqrt(fraction))
    start = (size - side) // 2
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[start : start + side, start : start + side] = True
    return mask


def random_pixels(size: int, fraction: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean mask of independently chosen pixels, ``fraction`` of them (the paper's case ii)."""
    return torch.rand(size, size, generator=generator) < fraction


def irregular_strokes(size: int, strokes: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean mask of a few thick random polyline strokes (free-form, like hand-drawn masks)."""
    from skimage.draw import disk  # noqa: PLC0415

    mask = np.zeros((size, size), dtype=bool)
    for _ in range(strokes):
        point = torch.rand(2, generator=generator).numpy() * size
        radius = max(1.0, size / 32 * (1 + float(torch.rand(1, generator=generator))))
        for _ in range(8):
            step = (torch.rand(2, generator=generator).numpy() - 0.5) * size / 4
            target = np.clip(point + step, 0, size - 1)
            for t in np.linspace(0, 1, 12):
                rows, cols = disk(tuple(point + t * (target - point)), radius, shape=(size, size))
                mask[rows, cols] = True
            point = target
    return torch.from_numpy(mask)


def fill_noise(images: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill masked pixels as the paper does: ``-1 + N(0, 1)`` in [-1, 1] units, i.e. ``(N(0, 1)) / 2`` in [0, 1]."""
    noise = torch.randn(images.shape, generator=generator) / 2.0
    return torch.where(mask, noise, images)


def fill_patch(images: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill masked pixels with the same image shifted by a random offset: plausible-looking content."""
    size = images.shape[-1]
    shift_y, shift_x = (int(v) for v in torch.randint(size // 4, 3 * size // 4, (2,), generator=generator))
    shifted = torch.roll(images, shifts=(shift_y, shift_x), dims=(-2, -1))
    return torch.where(mask, shifted, images)
