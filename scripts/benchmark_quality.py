"""Quality bar of issue #2: RGI vs plain inversion vs R-RGI on the built-in data, same generator.

For every category the GAN prior is trained ONCE (anomalib Engine, Rgi defaults unless overridden);
then each method re-learns its threshold on the validation split (half of the test crops) and is
tested on the other half, all with the same generator, step budget and map smoothing:

- plain inversion: map = |x - G(z)| (AnoGAN-style residual, ``mask_solver="none"``);
- RGI: map = |M|;
- R-RGI: RGI, then ``--finetune-steps`` more steps with per-image generator fine-tuning.

Metrics are anomalib's test metrics: pixel AUROC, AUPRO, dataset-level Dice at the learned
threshold (``pixel_Dice``), dataset-level Dice at the best threshold (``pixel_F1Max``) and the paper's
per-image oracle Dice (``pixel_PerImageBestDice``).

    python scripts/benchmark_quality.py                       # all three categories, CPU
    python scripts/benchmark_quality.py --categories brick --max-epochs 2 --steps 5   # smoke test
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from anomalib.engine import Engine

from anomalib_rgi import Rgi, RgiTextures

METRICS = ("pixel_AUROC", "pixel_AUPRO", "pixel_Dice", "pixel_F1Max", "pixel_PerImageBestDice", "image_AUROC")


def machine() -> str:
    """One line naming the machine the figures come from."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    return f"{platform.processor() or platform.machine()}, {device}, torch {torch.__version__}"


def run_category(category: str, args: argparse.Namespace, out: Path) -> list[dict]:
    """Train once, then validate + test each method with the same generator."""
    datamodule = RgiTextures(root=args.data_root, category=category, seed=args.seed)
    model = Rgi(max_epochs=args.max_epochs, steps=args.steps)
    engine = Engine(default_root_dir=out / category, logger=False, accelerator=args.accelerator, devices=1)
    start = time.time()
    engine.fit(model=model, datamodule=datamodule)
    fit_seconds = time.time() - start
    methods = {
        "plain inversion (residual map)": {"mask_solver": "none", "finetune_steps": 0},
        "RGI (mask map)": {"mask_solver": "adam", "finetune_steps": 0},
        "R-RGI (mask map)": {
            "mask_solver": "adam",
            "finetune_steps": args.finetune_steps,
            "finetune_lr": args.finetune_lr,
        },
    }
    rows = []
    for method, settings in methods.items():
        model.model.inversion.update(settings)
        start = time.time()
        engine.validate(model=model, datamodule=datamodule)
        metrics = engine.test(model=model, datamodule=datamodule)[0]
        rows.append(
            {
                "category": category,
                "method": method,
                **{name: round(float(metrics[name]), 4) for name in METRICS},
                "fit_s": round(fit_seconds, 1),
                "val_test_s": round(time.time() - start, 1),
            }
        )
    return rows


def markdown(rows: list[dict], header: str) -> str:
    """Render the rows as a markdown table."""
    columns = ["category", "method", *METRICS, "fit_s", "val_test_s"]
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the benchmark and write ``results.json`` and ``table.md``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--categories", nargs="+", default=["brick", "grass", "gravel"])
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    parser.add_argument("--out", default="results/quality")
    parser.add_argument("--max-epochs", type=int, default=40)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--finetune-lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accelerator", default="auto")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M-%SZ")
    out = Path(args.out) / stamp
    out.mkdir(parents=True, exist_ok=False)
    rows = []
    for category in args.categories:
        rows += run_category(category, args, out)
        (out / "results.json").write_text(
            json.dumps({"machine": machine(), "args": vars(args), "rows": rows}, indent=2)
        )
    header = (
        f"Quality benchmark, {stamp}, {machine()}; max_epochs={args.max_epochs}, steps={args.steps}, "
        f"R-RGI +{args.finetune_steps} steps at lr {args.finetune_lr}"
    )
    table = markdown(rows, header)
    (out / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
