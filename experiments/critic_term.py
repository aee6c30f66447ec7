"""Does the critic's realism term in the inversion (the authors' ``lambda_D``) help RGI / R-RGI (issue #5)?

The authors add ``-lambda_D * D(G(z))`` to the inversion (0.1 with their WGAN-GP critic); Rgi has it
as ``critic_weight`` (default 0). With our hinge patch critic and a data term summed over pixels, the
critic's gradient on ``z`` is 90-320x smaller than the data term's at the encoder start (the peer-run
priors of the three categories and a second brick prior), so 0.1 would do nothing: weights of 20 to
200 are the range where it can act. The first row printed is that ratio, measured on the half's
first 16 crops with the closed-form mask. Then, for one prior and one half of the test crops, RGI
(200 Adam steps) and R-RGI (+100 fine-tuning steps, lr 1e-4: the peer table's rows) at each weight;
one JSON row per weight and method: pixel AUROC, best dataset Dice, pixel AUROC per defect type.

python experiments/critic_term.py --checkpoint <model.ckpt> --category grass --half validation
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from prior_grid import METHODS

from anomalib_rgi import Rgi
from anomalib_rgi.data.textures import load_test_split, split_defect_types
from anomalib_rgi.metrics import map_quality
from anomalib_rgi.models.rgi.inversion import closed_form_mask, realism, robust_objective


def gradient_ratio(model: Rgi, images: torch.Tensor) -> float:
    """Norm of the data term's gradient on ``z`` over the critic term's, at the encoder start."""
    scaled = images * 2 - 1
    latents = model.model.encoder(scaled).detach().requires_grad_(True)
    restored = model.model.generator(latents)
    lam = model.model.inversion["lam"]
    mask = closed_form_mask((scaled - restored).detach(), lam)
    data_term = robust_objective(scaled, restored, mask, lam).sum()
    (data_gradient,) = torch.autograd.grad(data_term, latents, retain_graph=True)
    (critic_gradient,) = torch.autograd.grad(realism(model.model.critic, restored).sum(), latents)
    return float(data_gradient.norm() / critic_gradient.norm())


def main() -> None:
    """Score one half at every critic weight; print one JSON row per weight and method."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--half", default="validation", choices=("validation", "test"))
    parser.add_argument("--critic-weights", type=float, nargs="*", default=[0.0, 20.0, 200.0])
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    args = parser.parse_args()
    model = Rgi.load_from_checkpoint(args.checkpoint, map_location="cpu").eval()
    images, masks = load_test_split(args.data_root, args.category, half=args.half)
    defects = split_defect_types(args.data_root, args.category, half=args.half)
    ratio = gradient_ratio(model, images[:16])
    print(json.dumps({"category": args.category, "half": args.half, "data_to_critic_gradient": round(ratio, 1)}))
    for weight in args.critic_weights:
        for method, settings in METHODS.items():
            if not settings.get("steps", 1):
                continue  # the 0-step map never evaluates the critic
            start = time.time()
            result = model.model.invert(images, **settings, critic_weight=weight)
            scores = model.model.anomaly_map(result)[:, 0].detach().numpy()
            row = {
                "category": args.category,
                "half": args.half,
                "critic_weight": weight,
                "method": method,
                **map_quality(scores, masks, defects),
                "score_s": round(time.time() - start, 1),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
