"""Architecture / budget sweep of the RGI prior on the built-in data (no Lightning, no anomalib).

Trains generator+encoder+critic with the package's own losses for each configuration and measures,
on the held-out test crops: reconstruction error of normal crops, pixel AUROC and best dataset-level
Dice of encoder-only residual, plain inversion (residual), RGI (Adam mask, closed-form mask) and
R-RGI. Meant for a GPU (see docs/experiments.md); runs on a CPU too, slowly.

    python experiments/prior_sweep.py --category grass --out results/sweep_grass.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from collections import namedtuple
from pathlib import Path

import numpy as np
import torch

# torch_model imports two small things from anomalib; the GPU machine has no anomalib, so stand in.
if "anomalib" not in sys.modules:
    try:
        import anomalib  # noqa: F401
    except ImportError:
        stub_data = types.ModuleType("anomalib.data")
        stub_data.InferenceBatch = namedtuple(
            "InferenceBatch", "pred_score pred_label anomaly_map pred_mask", defaults=(None,) * 4
        )
        stub_components = types.ModuleType("anomalib.models.components")
        stub_components.GaussianBlur2d = None
        sys.modules.update(
            {
                "anomalib": types.ModuleType("anomalib"),
                "anomalib.data": stub_data,
                "anomalib.models": types.ModuleType("anomalib.models"),
                "anomalib.models.components": stub_components,
            }
        )

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))
if not hasattr(sys.modules["anomalib"], "__file__"):
    # Without anomalib, load our submodules without running the package __init__ files (they import it).
    for package in ("anomalib_rgi", "anomalib_rgi.data", "anomalib_rgi.models", "anomalib_rgi.models.rgi"):
        module = types.ModuleType(package)
        module.__path__ = [str(SRC.joinpath(*package.split(".")))]
        sys.modules[package] = module
from PIL import Image
from sklearn.metrics import roc_auc_score

from anomalib_rgi.data.textures import build_category
from anomalib_rgi.models.rgi.inversion import invert
from anomalib_rgi.models.rgi.loss import CriticLoss, GeneratorLoss, corrupt
from anomalib_rgi.models.rgi.torch_model import RgiModel


def load_split(root: Path):
    def load(paths):
        return torch.stack(
            [torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1).float() / 255 for p in paths]
        )

    train = load(sorted((root / "train" / "good").glob("*.png")))
    test_paths = sorted((root / "test").glob("*/*.png"))
    masks = []
    for p in test_paths:
        if p.parent.name == "good":
            masks.append(np.zeros((train.shape[-2], train.shape[-1]), bool))
        else:
            masks.append(np.array(Image.open(root / "ground_truth" / p.parent.name / f"{p.stem}_mask.png")) > 127)
    return train, load(test_paths), np.stack(masks)


def best_dataset_dice(scores: np.ndarray, truth: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    true_positives = np.cumsum(truth[order])
    predicted = np.arange(1, len(scores) + 1)
    return float((2 * true_positives / (predicted + truth.sum())).max())


def train_prior(model, train, iterations, batch_size, device, adversarial_weight, seed):
    torch.manual_seed(seed)
    generator_loss, critic_loss = GeneratorLoss(adversarial_weight=adversarial_weight), CriticLoss()
    opt_g = torch.optim.Adam([*model.generator.parameters(), *model.encoder.parameters()], 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(model.critic.parameters(), 2e-4, betas=(0.5, 0.999))
    train = train.to(device)
    for _ in range(iterations):
        x = train[torch.randint(0, len(train), (batch_size,), device=device)] * 2 - 1
        fake = model.generator(model.generator.sample_latent(batch_size))
        encoded = model.encoder(corrupt(x))
        rec = model.generator(encoded)
        d_loss = critic_loss(model.critic(x), model.critic(fake.detach()), model.critic(rec.detach()))
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        losses = generator_loss(x, rec, encoded, model.critic(fake), model.critic(rec))
        opt_g.zero_grad()
        losses["loss"].backward()
        opt_g.step()
    return {k: float(v) for k, v in losses.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--category", default="grass")
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    parser.add_argument("--out", required=True)
    parser.add_argument("--configs", default="s8c8b8,s16c16b8,s8c4b8,s4c2b8,s16c8b16")
    parser.add_argument("--iterations", default="800")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--adversarial-weight", type=float, default=1.0)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    root = build_category(args.data_root, args.category)
    train, test, masks = load_split(root)
    good = ~masks.reshape(len(masks), -1).any(1)
    x = (test * 2 - 1).to(device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for iterations in [int(i) for i in args.iterations.split(",")]:
        for config in args.configs.split(","):
            stride, channels, base = (int(v) for v in config[1:].replace("c", " ").replace("b", " ").split())
            torch.manual_seed(0)
            model = RgiModel(128, 3, stride, channels, base).to(device)
            start = time.time()
            train_prior(model, train, iterations, 16, device, args.adversarial_weight, seed=0)
            train_seconds = time.time() - start
            model.eval()
            with torch.no_grad():
                z0 = model.encoder(x)
            methods = {
                "encoder_residual": None,
                "plain_lr0.1": {"mask_solver": "none"},
                "plain_lr0.02": {"mask_solver": "none", "lr": 0.02},
            }
            for lam in (0.02, 0.005):
                for lr in (0.1, 0.02):
                    methods[f"rgi_adam_{lam}_lr{lr}"] = {"lam": lam, "lr": lr}
                    methods[f"rgi_cf_{lam}_lr{lr}"] = {"lam": lam, "lr": lr, "mask_solver": "closed_form"}
                methods[f"rrgi_adam_{lam}_lr0.02"] = {
                    "lam": lam,
                    "lr": 0.02,
                    "finetune_steps": args.steps // 2,
                    "finetune_lr": 1e-4,
                }
            for name, kwargs in methods.items():
                start = time.time()
                if kwargs is None:
                    with torch.no_grad():
                        restored = model.generator(z0)
                    amap = (x - restored).abs().mean(1, keepdim=True)
                else:
                    result = invert(model.generator, x, z0, steps=args.steps, **kwargs)
                    restored, amap = result.restored, result.mask.abs().mean(1, keepdim=True)
                seconds = time.time() - start
                mse_good = float(((x - restored)[torch.from_numpy(good).to(device)] ** 2).mean())
                for sigma in (0, 2, 4):
                    smoothed = amap if sigma == 0 else gaussian_blur(amap, sigma)
                    flat = smoothed[:, 0].cpu().numpy()
                    row = {
                        "category": args.category,
                        "config": config,
                        "iterations": iterations,
                        "method": name,
                        "sigma": sigma,
                        "pixel_auroc": round(float(roc_auc_score(masks.ravel(), flat.ravel())), 4),
                        "best_dice": round(best_dataset_dice(flat.ravel(), masks.ravel()), 4),
                        "mse_good": round(mse_good, 4),
                        "seconds": round(seconds, 2),
                        "train_seconds": round(train_seconds, 1),
                    }
                    print(json.dumps(row), flush=True)
                    with out.open("a") as handle:
                        handle.write(json.dumps(row) + "\n")


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, device=maps.device, dtype=maps.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = torch.nn.functional.pad(maps, (radius, radius, radius, radius), mode="reflect")
    out = torch.nn.functional.conv2d(padded, kernel.view(1, 1, 1, -1))
    return torch.nn.functional.conv2d(out, kernel.view(1, 1, -1, 1))


if __name__ == "__main__":
    main()
