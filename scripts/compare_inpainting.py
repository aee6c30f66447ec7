"""The paper's inpainting comparison (its Table, see docs) on the built-in textures, offline.

For each category and trained Rgi checkpoint: held-out defect-free crops from the test rows of the
photograph are corrupted (central block, random pixels, irregular strokes; filled with the paper's
``-1 + N(0, 1)`` or with a shifted copy of the image), then restored by

- "plain inversion, no mask" (Yeh et al. without mask),
- "inversion on known pixels, true mask given" (Yeh et al. with mask),
- "RGI" (no mask),
- "true mask + generator fine-tuning" (Pan et al. with mask),
- "R-RGI" (no mask),

all with the same generator, encoder start and step budget. PSNR (both images min-max normalised to
[0, 1]) and SSIM (11 x 11 Gaussian window) on the whole restored image against the clean one; the
median over images. Writes ``table.md`` and ``grid.png``.

    python scripts/compare_inpainting.py --checkpoint brick=results/.../model.ckpt --images 50
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from anomalib_rgi import Rgi
from anomalib_rgi.data.textures import TRAIN_ROW_FRACTION, _random_crop, load_photograph
from anomalib_rgi.inpainting import central_block, fill_noise, fill_patch, irregular_strokes, random_pixels
from anomalib_rgi.models.rgi import invert
from anomalib_rgi.reporting import category_checkpoint

CORRUPTIONS = {
    "central block": lambda size, _: central_block(size, 0.25),
    "random pixels": lambda size, g: random_pixels(size, 0.5, g),
    "irregular strokes": lambda size, g: irregular_strokes(size, generator=g),
}
FILLS = {"noise": fill_noise, "patch": fill_patch}


def heldout_crops(category: str, count: int, size: int, seed: int) -> torch.Tensor:
    """Defect-free crops from the rows the prior never saw (the test region), ``(N, 3, size, size)``."""
    photo = load_photograph(category)
    rows = (int(photo.shape[0] * TRAIN_ROW_FRACTION), photo.shape[0])
    rng = np.random.default_rng([seed, 7])
    crops = np.stack([_random_crop(photo, rows, size, rng) for _ in range(count)])
    return torch.from_numpy(crops)[:, None].repeat(1, 3, 1, 1)


def scores(restored: torch.Tensor, clean: torch.Tensor) -> tuple[float, float]:
    """Median PSNR and SSIM (grey level, min-max normalised images)."""
    psnr, ssim = [], []

    def normalise(image: np.ndarray) -> np.ndarray:
        return (image - image.min()) / max(image.max() - image.min(), 1e-12)

    for restored_image, clean_image in zip(restored[:, 0].numpy(), clean[:, 0].numpy(), strict=True):
        output, target = normalise(restored_image), normalise(clean_image)
        psnr.append(peak_signal_noise_ratio(target, output, data_range=1.0))
        ssim.append(
            structural_similarity(target, output, data_range=1.0, gaussian_weights=True, sigma=1.5, win_size=11)
        )
    return float(np.median(psnr)), float(np.median(ssim))


def methods(model: Rgi, args: argparse.Namespace) -> dict[str, dict]:
    """Solver settings of the five compared methods."""
    lam = args.lam or model.hparams.lam
    finetune_steps, finetune_lr = args.finetune_steps, args.finetune_lr
    return {
        "plain inversion, no mask": {"mask_solver": "none"},
        "inversion on known pixels, true mask given": {"mask_solver": "given"},
        "RGI": {"mask_solver": args.mask_solver, "lam": lam},
        "true mask + generator fine-tuning": {
            "mask_solver": "given",
            "finetune_steps": finetune_steps,
            "finetune_lr": finetune_lr,
        },
        "R-RGI": {
            "mask_solver": args.mask_solver,
            "lam": lam,
            "finetune_steps": finetune_steps,
            "finetune_lr": finetune_lr,
        },
    }


def main() -> None:
    """Run the comparison and write the table and picture grid."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint", type=category_checkpoint, action="append", required=True, help="CATEGORY=PATH, repeatable"
    )
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--steps", type=int, default=None, help="solver steps (default: the model's)")
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--finetune-lr", type=float, default=1e-4)
    parser.add_argument("--mask-solver", default="adam", choices=("adam", "closed_form"), help="of RGI and R-RGI")
    parser.add_argument("--lam", type=float, default=None, help="of RGI and R-RGI (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/inpainting")
    args = parser.parse_args()

    out = Path(args.out) / datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M-%SZ")
    out.mkdir(parents=True, exist_ok=False)
    rows, grid_rows = [], []
    for category, path in args.checkpoint:
        model = Rgi.load_from_checkpoint(path).eval()
        steps = args.steps or model.hparams.steps
        clean = heldout_crops(category, args.images, model.model.image_size, args.seed)
        generator = torch.Generator().manual_seed(args.seed)
        for corruption, make_mask in CORRUPTIONS.items():
            masks = torch.stack([make_mask(clean.shape[-1], generator) for _ in range(len(clean))])[:, None]
            for fill_name, fill in FILLS.items():
                corrupted = fill(clean, masks.expand_as(clean), generator)
                scaled = corrupted * 2 - 1
                with torch.no_grad():
                    start = model.model.encoder(scaled)
                panels = [corrupted[0]]
                for method, settings in methods(model, args).items():
                    given = masks.float() if settings["mask_solver"] == "given" else None
                    result = invert(model.model.generator, scaled, start, steps=steps, given_mask=given, **settings)
                    restored = ((result.restored + 1) / 2).clamp(0, 1)
                    psnr, ssim = scores(restored, clean)
                    rows.append(
                        {
                            "category": category,
                            "corruption": corruption,
                            "fill": fill_name,
                            "method": method,
                            "psnr": round(psnr, 2),
                            "ssim": round(ssim, 3),
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
                    panels.append(restored[0])
                panels.append(clean[0])
                grid_rows.append(torch.cat(panels, dim=2))
    header = (
        f"Inpainting comparison, {out.name}; median over {args.images} held-out crops; PSNR dB / SSIM; "
        f"{steps} steps, fine-tuning +{args.finetune_steps} at {args.finetune_lr}; RGI/R-RGI mask solver "
        f"{args.mask_solver}, lam {methods(model, args)['RGI']['lam']}; {torch.get_num_threads()} CPU threads"
    )
    names = list(methods(model, args))
    lines = [
        header,
        "",
        "| category | corruption | fill | " + " | ".join(names) + " |",
        "|" + "---|" * (3 + len(names)),
    ]
    for key in dict.fromkeys((r["category"], r["corruption"], r["fill"]) for r in rows):
        cells = [f"{r['psnr']} / {r['ssim']}" for r in rows if (r["category"], r["corruption"], r["fill"]) == key]
        lines.append("| " + " | ".join([*key, *cells]) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    grid = (torch.cat(grid_rows, dim=1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(grid).save(out / "grid.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
