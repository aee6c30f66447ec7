"""How often does an image threshold set on good validation parts reject an unseen good part? Leave one out.

    python research/probes/threshold_rules.py CACHE.pt=CKPT [...] --data-root R [--rate 0.01]

Only validation halves are read (cache_inversions.py ``--splits val``). Each fit's image scores are
the checkpoint's own (its saved map and image-score settings). For each good validation image, each
rule sets the threshold from the other good validation images and the image counts as rejected when
its score lies above it: the share rejected estimates the rule's false-alarm rate on unseen good
parts. Escapes: the share of the defective validation images at or below the threshold set from all
good validation images. Rules, for a budget ``rate`` below one image in ``n``:

- ``normal`` (the product's rule): the higher of the highest good score and mean + z sd, z the
  normal's ``1 - rate`` quantile.
- ``normal_prediction``: mean + t sd sqrt(1 + 1/n), t Student's ``1 - rate`` quantile at n - 1
  degrees of freedom: the bound a new draw of the same normal passes with probability ``rate``
  when mean and sd are themselves estimated from n scores.
- ``lognormal``, ``lognormal_prediction``: the same on the logarithm of the scores.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy import stats
from select_map import parts_of, prepared_model

from anomalib_rgi.models.rgi.anomaly_map import score_settings, weigh
from anomalib_rgi.post_processing import false_alarm_threshold


def normal(scores: np.ndarray, rate: float) -> float:
    """The product's rule (``post_processing.false_alarm_threshold``)."""
    return float(false_alarm_threshold(torch.from_numpy(scores).double(), rate))


def normal_prediction(scores: np.ndarray, rate: float) -> float:
    n = len(scores)
    bound = scores.mean() + stats.t.ppf(1 - rate, n - 1) * scores.std(ddof=1) * np.sqrt(1 + 1 / n)
    return max(scores.max(), bound)


RULES = {
    "normal": normal,
    "normal_prediction": normal_prediction,
    "lognormal": lambda scores, rate: float(np.exp(normal(np.log(scores), rate))),
    "lognormal_prediction": lambda scores, rate: float(np.exp(normal_prediction(np.log(scores), rate))),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("fits", nargs="+", help="CACHE.pt=CKPT")
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    parser.add_argument("--rate", type=float, default=0.01)
    args = parser.parse_args()
    print("| prior | good val | " + " | ".join(f"{name}: rejected (LOO) / escapes" for name in RULES) + " |")
    print("|---|---|" + "---|" * len(RULES))
    totals = {name: np.zeros(3) for name in RULES}
    for fit in args.fits:
        cache_path, checkpoint = fit.split("=")
        cache = torch.load(cache_path, weights_only=False)["val"]
        category = next(c for c in ("brick", "fabric", "grass", "gravel") if c in cache_path)
        model = prepared_model(checkpoint, args.data_root, category)
        parts = parts_of(model, cache)
        scores = weigh(parts, score_settings(model.model.anomaly_map.settings)).flatten(1).amax(1).numpy()
        good = scores[cache["label"].numpy() == 0]
        defective = scores[cache["label"].numpy() == 1]
        cells = []
        for name, rule in RULES.items():
            rejected = sum(good[i] > rule(np.delete(good, i), args.rate) for i in range(len(good)))
            escapes = float((defective <= rule(good, args.rate)).mean())
            totals[name] += (rejected, len(good), escapes)
            cells.append(f"{rejected}/{len(good)} / {escapes:.3f}")
        label = cache_path.rsplit("/", 1)[-1].removesuffix(".pt")
        print(f"| {label} | {len(good)} | " + " | ".join(cells) + " |", flush=True)
    count = len(args.fits)
    cells = [f"{rejected / seen:.3f} / {escapes / count:.3f}" for rejected, seen, escapes in totals.values()]
    print("| all | | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
