"""Good parts rejected and defective parts passed, at the F1-optimal image threshold and at a false-alarm budget.

    python research/probes/line_threshold.py CATEGORY=CKPT [...] --data-root R [--budgets 0 0.01] [--with-f1]

For each fitted checkpoint: learns the image threshold again on the validation half (``engine.validate``)
with anomalib's post-processor (F1-optimal on a validation half with many defects) and with
``FalseAlarmPostProcessor`` at each image budget (pixel threshold left F1-optimal), then tests on the
test half. Prints ``image_FalseAlarmRate`` (good parts rejected), ``image_EscapeRate`` (defective parts
passed) and the pixel Dice at the learned pixel threshold (unchanged by the image threshold).
"""

from __future__ import annotations

import argparse
import tempfile

from anomalib.engine import Engine
from anomalib.post_processing import PostProcessor

from anomalib_rgi import FalseAlarmPostProcessor, Rgi, RgiTextures
from anomalib_rgi.reporting import category_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("fits", nargs="+", type=category_checkpoint)
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.0])
    parser.add_argument("--with-f1", action="store_true", help="also anomalib's F1-optimal image threshold")
    args = parser.parse_args()
    print("| category | image threshold | good rejected | defective passed | pixel Dice |")
    print("|---|---|---|---|---|")
    for category, checkpoint in args.fits:
        rules = {"F1-optimal (anomalib)": PostProcessor} if args.with_f1 else {}
        for budget in args.budgets:
            rules[f"false-alarm budget {budget:g}"] = lambda budget=budget: FalseAlarmPostProcessor(
                pixel_false_alarm_rate=None, image_false_alarm_rate=budget
            )
        for name, post_processor in rules.items():
            model = Rgi.load_from_checkpoint(checkpoint, map_location="cpu", post_processor=post_processor())
            datamodule = RgiTextures(root=args.data_root, category=category, version=2)
            with tempfile.TemporaryDirectory() as work:
                engine = Engine(default_root_dir=work, logger=False, accelerator="cpu", devices=1)
                engine.validate(model=model, datamodule=datamodule)
                [metrics] = engine.test(model=model, datamodule=datamodule)
            print(
                f"| {category} | {name} | {metrics['image_FalseAlarmRate']:.3f} | {metrics['image_EscapeRate']:.3f} "
                f"| {metrics['pixel_Dice']:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
