"""Which robust solver restores heavy corruption, on tuning crops the inpainting table never uses.

The table (``scripts/compare_inpainting.py``) draws its held-out crops with seed 0; this probe uses
seed 1, so the settings it picks are not chosen on the table's images.

python experiments/inpainting_probe.py --checkpoint <model.ckpt> --category brick
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from anomalib_rgi import Rgi
from anomalib_rgi.models.rgi import invert

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from compare_inpainting import CORRUPTIONS, FILLS, heldout_crops, scores

REFERENCES = {
    "true mask given": {"mask_solver": "given"},
    "plain inversion": {"mask_solver": "none"},
    "encoder only": {"mask_solver": "none", "steps": 0},
}
ADAM_MASK_SETTINGS = {
    "RGI, Adam M, lam 0.02": {"mask_solver": "adam", "lam": 0.02},
    "RGI, Adam M, lam 0.02, latent lr 0.3": {"mask_solver": "adam", "lam": 0.02, "lr": 0.3},
    "RGI, Adam M, lam 0.02, mask lr 0.3": {"mask_solver": "adam", "lam": 0.02, "mask_lr": 0.3},
}


def settings_to_probe(lams: list[float], with_adam_mask: bool) -> dict[str, dict]:
    """The reference methods, the closed-form mask at each ``lam`` and optionally Adam's mask."""
    closed_form = {f"RGI, closed-form M, lam {lam:g}": {"mask_solver": "closed_form", "lam": lam} for lam in lams}
    return {**REFERENCES, **closed_form, **(ADAM_MASK_SETTINGS if with_adam_mask else {})}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--category", default="brick")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1, help="the table uses 0: keep this different")
    parser.add_argument("--lams", type=float, nargs="+", default=[0.005, 0.02, 0.05], help="of the closed-form mask")
    parser.add_argument("--no-adam-mask", action="store_true", help="skip the Adam-mask rows")
    args = parser.parse_args()
    settings_by_name = settings_to_probe(args.lams, with_adam_mask=not args.no_adam_mask)
    model = Rgi.load_from_checkpoint(args.checkpoint, map_location="cpu").eval()
    clean = heldout_crops(args.category, args.images, model.model.image_size, seed=args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    for corruption, make_mask in CORRUPTIONS.items():
        masks = torch.stack([make_mask(clean.shape[-1], generator) for _ in range(len(clean))])[:, None]
        scaled = FILLS["noise"](clean, masks.expand_as(clean), generator) * 2 - 1
        with torch.no_grad():
            start = model.model.encoder(scaled)
        for name, settings in settings_by_name.items():
            given = masks.float() if settings["mask_solver"] == "given" else None
            result = invert(model.model.generator, scaled, start, **{"steps": args.steps, **settings}, given_mask=given)
            psnr, ssim = scores(((result.restored + 1) / 2).clamp(0, 1), clean)
            row = {"corruption": corruption, "method": name, "psnr": round(psnr, 2), "ssim": round(ssim, 3)}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
