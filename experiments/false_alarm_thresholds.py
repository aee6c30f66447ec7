"""Good parts only: thresholds from a false-alarm budget on good validation images, per budget.

Session 18 (``synthetic_validation.py``) fitted the fast preset validating on defect-free training
images alone (``val_split_mode from_train``); anomalib's threshold then falls back to the highest
good score and costs 0.11-0.18 Dice against thresholds learned on real defects. Here the same priors
(the ``good`` rows of its rows file) are validated again on the same good images with
``FalseAlarmPostProcessor`` at each pixel false-alarm rate, then tested on the real test half with
``Engine.test``. One JSON row per (category, rate): the test metrics, among them ``pixel_Dice`` at
the budget's threshold and ``pixel_FalseAlarmRate``, the share of good test pixels flagged (how
well the budget set on validation images holds on unseen ones).

``--validation unseen`` validates instead on the good crops of the real validation half: crops of the
photograph's test rows, which no training crop covers (``from_train`` crops overlap the training
crops' pixels many times over, and come from other rows of the photograph). The two arms tell
whether a budget overshoot on the test half comes from the validation crops rather than the rule
(session 20: from the rows, the thresholds move in opposite directions on gravel and grass).

A budget is the factory's choice, not ours to tune on the test half. ``--summarise`` also prints the
default an engineer would have picked from the OTHER categories (the rate of the best mean Dice
over them), scored on the category left out.

python experiments/false_alarm_thresholds.py --fits docs/results/synthetic-validation-2026-11-28/rows.jsonl \
    --out docs/results/false-alarm-<date>/rows.jsonl
python experiments/false_alarm_thresholds.py --summarise docs/results/false-alarm-<date>/rows*.jsonl
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from anomalib.engine import Engine
from synthetic_validation import data_arguments

from anomalib_rgi import FalseAlarmPostProcessor, Rgi, RgiTextures

RATES = [0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]


class UnseenGoodValidation(RgiTextures):
    """The real validation half without its defective crops: good crops from rows no training crop covers."""

    def _create_val_split(self) -> None:
        super()._create_val_split()
        samples = self.val_data.samples
        self.val_data.samples = samples[samples.label_index == 0].reset_index(drop=True)


def score_budgets(fit: dict, rates: list[float], validation: str = "train") -> Iterator[dict]:
    """Validate one good-only prior at each pixel false-alarm rate and test it on the real test half."""
    data_args = data_arguments(Path(fit["config"]), fit["category"])
    if validation == "train":
        good_only = RgiTextures(**data_args, val_split_mode="from_train", val_split_ratio=fit["split_ratio"])
    else:
        good_only = UnseenGoodValidation(**data_args)
    real = RgiTextures(**data_args)
    with tempfile.TemporaryDirectory() as work:
        engine = Engine(default_root_dir=work, logger=False, accelerator="cpu", devices=1)
        for rate in rates:
            post_processor = FalseAlarmPostProcessor(pixel_false_alarm_rate=rate)
            model = Rgi.load_from_checkpoint(fit["checkpoint"], weights_only=True, post_processor=post_processor)
            engine.validate(model=model, datamodule=good_only, verbose=False)
            (metrics,) = engine.test(model=model, datamodule=real, verbose=False)
            yield {
                "category": fit["category"],
                "checkpoint": fit["checkpoint"],
                "validation": validation,
                "pixel_false_alarm_rate": rate,
                "pixel_threshold": round(float(post_processor.pixel_threshold), 4),
                "image_threshold": round(float(post_processor.image_threshold), 4),
                **{key: round(float(value), 5) for key, value in metrics.items()},
            }


def summarise(rows_paths: list[Path]) -> None:
    """Print, per validation source, Dice and the measured false-alarm rate per budget (means over priors)."""
    rows = [json.loads(line) for path in rows_paths for line in path.read_text().splitlines()]
    by_source: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_source[row.get("validation", "train")].append(row)
    for source, source_rows in by_source.items():
        print(f"\n## Good validation crops: {source}")
        summarise_source(source_rows)


def summarise_source(rows: list[dict]) -> None:
    """Print Dice and the measured false-alarm rate per budget (means over priors), then the leave-one-out default."""
    categories = list(dict.fromkeys(row["category"] for row in rows))
    cells: dict[float, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        cells[row["pixel_false_alarm_rate"]][row["category"]].append(row)

    def mean(rate: float, category: str, key: str) -> float:
        return sum(row[key] for row in cells[rate][category]) / len(cells[rate][category])

    priors = {category: len(cells[min(cells)][category]) for category in categories}
    print(f"Priors per category: {priors}; means over them.")
    print("| pixel false-alarm budget | " + " | ".join(f"{c}: Dice / good pixels flagged" for c in categories) + " |")
    print("|---|" + "---|" * len(categories))
    for rate in sorted(cells):
        means = [f"{mean(rate, c, 'pixel_Dice'):.3f} / {mean(rate, c, 'pixel_FalseAlarmRate'):.2g}" for c in categories]
        print(f"| {rate:g} | " + " | ".join(means) + " |")
    print("\nLeave one category out (budget of the best mean Dice over the others, scored on the one left out):")
    for left_out in categories:
        others = [c for c in categories if c != left_out]
        chosen = max(cells, key=lambda rate: sum(mean(rate, c, "pixel_Dice") for c in others))
        print(f"- {left_out}: budget {chosen:g} -> Dice {mean(chosen, left_out, 'pixel_Dice'):.3f}")


def main() -> None:
    """Score every good-only fit of the rows file at every budget; append one JSON row per budget."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fits", type=Path, help="rows of synthetic_validation.py; its 'good' fits are scored")
    parser.add_argument("--categories", nargs="+", help="only these categories (default: all good fits)")
    parser.add_argument("--rates", nargs="+", type=float, default=RATES)
    parser.add_argument(
        "--validation",
        choices=["train", "unseen"],
        default="train",
        help="good validation crops: held-out training crops (from_train) or the real validation half's good crops",
    )
    parser.add_argument("--out", type=Path, help="JSON lines file the rows are appended to")
    parser.add_argument("--summarise", type=Path, nargs="+", help="print rows files as tables instead of scoring")
    args = parser.parse_args()
    if args.summarise:
        summarise(args.summarise)
        return
    if args.fits is None or args.out is None:
        parser.error("--fits and --out are required to score")
    fits = [json.loads(line) for line in args.fits.read_text().splitlines()]
    fits = [fit for fit in fits if fit["validation"] == "good"]
    fits = [fit for fit in fits if not args.categories or fit["category"] in args.categories]
    if not fits:
        parser.error(f"{args.fits} holds no good-only fit of {args.categories or 'any category'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for fit in fits:
        for row in score_budgets(fit, args.rates, args.validation):
            with args.out.open("a") as stream:
                stream.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
