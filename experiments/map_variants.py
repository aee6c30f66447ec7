"""Other anomaly maps from the same inversion at the encoder's start (issue #5): does any transfer?

For one trained Rgi prior and one half of the built-in test crops, scores the 0-step inversion
(``z = E(x)``, the peers table's cheapest RGI row) with:

- ``current``: the closed-form mask of the residual ``x - G(E(x))`` (what Rgi computes);
- ``residual scale s, lam l``: the closed-form mask of the Gaussian-blurred residual (the prior cannot
  place a stochastic texture's fine detail, and that error is zero-mean: blurring cancels it, while
  a defect's offset survives);
- ``union``: a pixel is masked if it is an outlier at the full scale or at scale s;
- ``latent kNN``: distance of each latent vector ``E(x)_ij`` to its nearest training latent
  (upsampled; PatchCore's idea on the encoder's latents), and its product with ``current``;
- ``critic``: ``-D(x)``, where the GAN's patch critic finds the test image itself unrealistic (it was
  trained to reject the prior's blurred output, so a smooth foreign patch may look fake to it), and
  ``sigmoid(-D(x))`` times ``current``; ``critic deviation``: ``|D(x) - mean D(train)|`` in units of
  the training crops' spread (the critic finds holes MORE real than grass: both directions matter),
  and its sum with ``current``, each map divided by its 99th percentile on the training crops;
- ``residual energy``: the log of the blurred squared residual at scale s, against its mean and
  spread on the training crops. A smooth foreign patch is reproduced BETTER than normal grass (its
  residual is below normal), so the ``deviation`` is two-sided and the ``deficit`` counts only the
  low side; each is also added to ``current`` (both divided by their training 99th percentiles).

Each map is smoothed like Rgi's (``map_sigma``) and reported as pixel AUROC / best dataset Dice, and
pixel AUROC per defect type (that type's crops and the good crops).

python experiments/map_variants.py --checkpoint <model.ckpt> --category grass --half validation
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.models.components import GaussianBlur2d

from anomalib_rgi import Rgi
from anomalib_rgi.data.textures import load_test_split, split_defect_types, train_image_paths
from anomalib_rgi.inpainting import load_images
from anomalib_rgi.metrics import map_quality
from anomalib_rgi.models.rgi.inversion import closed_form_mask


def maps_to_compare(model: Rgi, images: torch.Tensor, train: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every map variant, ``(N, 1, H, W)``, smoothed by the model's map blur."""
    smooth = model.model.blur

    def to_image(low_resolution: torch.Tensor) -> torch.Tensor:
        return smooth(F.interpolate(low_resolution, size=images.shape[-2:], mode="bilinear", align_corners=False))

    with torch.no_grad():
        residual = model.model.invert(images, steps=0, mask_solver="none").mask
        full = {lam: closed_form_mask(residual, lam) for lam in (0.005, 0.02, 0.05)}
        maps = {"current": model.model.anomaly_map(model.model.invert(images, steps=0, mask_solver="closed_form"))}
        for sigma in (1, 2, 3, 4):
            blurred = GaussianBlur2d(sigma=sigma, channels=residual.shape[1])(residual)
            for lam in (0.005, 0.02):
                coarse = closed_form_mask(blurred, lam)
                maps[f"residual scale {sigma}, lam {lam}"] = smooth(coarse.mean(1, keepdim=True))
                for full_lam, fine in full.items():
                    union = 1 - (1 - fine) * (1 - coarse)
                    name = f"union: scale 0 lam {full_lam} + scale {sigma} lam {lam}"
                    maps[name] = smooth(union.mean(1, keepdim=True))
        bank = model.model.encoder(train * 2 - 1)
        latents = model.model.encoder(images * 2 - 1)
        channels = bank.shape[1]
        vectors = latents.permute(0, 2, 3, 1).reshape(-1, channels)
        nearest = torch.cdist(vectors, bank.permute(0, 2, 3, 1).reshape(-1, channels))
        nearest = nearest.min(dim=1).values.reshape(latents.shape[0], 1, *latents.shape[-2:])
        maps["latent kNN"] = knn = to_image(nearest)
        maps["current x latent kNN"] = maps["current"] * knn
        test_critic, train_critic = model.model.critic(images * 2 - 1), model.model.critic(train * 2 - 1)
        maps["critic"] = critic = to_image(-test_critic)
        maps["current x critic"] = maps["current"] * torch.sigmoid(critic)

        def critic_deviation(logits: torch.Tensor) -> torch.Tensor:
            return to_image((logits - train_critic.mean()).abs() / train_critic.std())

        maps["critic deviation"] = deviation = critic_deviation(test_critic)
        train_current = model.model.anomaly_map(model.model.invert(train, steps=0, mask_solver="closed_form"))

        def plus_current(extra: torch.Tensor, train_extra: torch.Tensor) -> torch.Tensor:
            # Each map in units of its own 99th percentile on the training crops, so neither dominates.
            return maps["current"] / train_current.quantile(0.99) + extra / train_extra.quantile(0.99).clamp_min(1e-3)

        maps["current + critic deviation"] = plus_current(deviation, critic_deviation(train_critic))
        train_residual = model.model.invert(train, steps=0, mask_solver="none").mask
        for sigma in (2, 4, 8):
            energy = GaussianBlur2d(sigma=sigma, channels=1)
            train_log_energy = energy(train_residual.square().mean(1, keepdim=True)).clamp_min(1e-8).log()
            log_energy = energy(residual.square().mean(1, keepdim=True)).clamp_min(1e-8).log()
            mean, spread = train_log_energy.mean(), train_log_energy.std()
            deviation, train_deviation = (smooth((e - mean).abs() / spread) for e in (log_energy, train_log_energy))
            deficit, train_deficit = (smooth((mean - e).clamp_min(0) / spread) for e in (log_energy, train_log_energy))
            maps[f"residual energy deviation, scale {sigma}"] = deviation
            maps[f"residual energy deficit, scale {sigma}"] = smooth(mean - log_energy)
            maps[f"current + residual energy deficit, scale {sigma}"] = plus_current(deficit, train_deficit)
            maps[f"current + residual energy deviation, scale {sigma}"] = plus_current(deviation, train_deviation)
    return maps


def main() -> None:
    """Score every variant on one half; print one JSON row per variant."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--half", default="validation", choices=("validation", "test"))
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    args = parser.parse_args()
    model = Rgi.load_from_checkpoint(args.checkpoint, map_location="cpu").eval()
    images, masks = load_test_split(args.data_root, args.category, half=args.half)
    defects = split_defect_types(args.data_root, args.category, half=args.half)
    train = load_images(train_image_paths(args.data_root, args.category), model.model.image_size)
    for name, anomaly_map in maps_to_compare(model, images, train).items():
        scores = anomaly_map[:, 0].numpy()
        row = {"category": args.category, "half": args.half, "map": name, **map_quality(scores, masks, defects)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
