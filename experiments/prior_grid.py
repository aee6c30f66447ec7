"""Which GAN prior closes RGI's gap on grass: width, training length, loss weights, flips (issue #5)?

Trains Rgi on one built-in category with the given network and loss settings. After each epoch in
``--score-epochs`` it scores both halves of the test crops (choose on ``validation``, report ``test``)
with RGI at the encoder's start (0 steps, closed-form mask), RGI (200 Adam steps) and R-RGI (100
more steps that also fine-tune G, lr 1e-4: the peer table's rows; ``--finetune-variants`` adds other
R-RGI settings; ``--encoder-start-only`` keeps only the first, for grids that save priors to score
elsewhere, e.g. with ``experiments/prior_ensemble.py``), and prints one JSON row per half
and method: pixel AUROC, best dataset Dice and pixel AUROC per defect type; after every epoch, a
row with the generator's sample diversity (the mode-collapse statistic). Scoring runs with the
random state saved and restored, so the prior trains as it would without it. The prior is
saved without its optimiser states after each scored epoch (``--save``, which may name ``{epoch}`` to
keep every scored epoch's prior; loads with
``Rgi.load_from_checkpoint``; its thresholds are unset: validate before testing).

python experiments/prior_grid.py --category grass --base-channels 32 --epochs 160 --score-epochs 40 80 160
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torchvision.transforms import v2

from anomalib_rgi import Rgi, RgiTextures
from anomalib_rgi.data.textures import load_test_split, split_defect_types
from anomalib_rgi.metrics import map_quality

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from compare_peers import TINY_DATA, TINY_RGI

METHODS = {
    "RGI 0 steps, closed form": {"steps": 0, "mask_solver": "closed_form", "finetune_steps": 0},
    "RGI (200 Adam steps)": {"mask_solver": "adam", "finetune_steps": 0},
    "R-RGI (+100 fine-tuning steps)": {"mask_solver": "adam", "finetune_steps": 100, "finetune_lr": 1e-4},
}


class ScoreAtEpochs(Callback):
    """Print score rows after the chosen training epochs."""

    def __init__(self, epochs: list[int], halves: dict, row: dict, methods: dict, save: str | None) -> None:
        self.epochs, self.halves, self.row, self.methods, self.save = set(epochs), halves, row, methods, save
        self.start, self.scoring_seconds = time.time(), 0.0

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Score both halves with every method if this epoch is one of ``epochs``."""
        epoch = trainer.current_epoch + 1
        # Callbacks run before the model's own epoch-end hook, which resets these sums.
        if pl_module._diversity_count:
            diversity = pl_module._diversity_sum / pl_module._diversity_count
            print(json.dumps({**self.row, "epoch": epoch, "sample_diversity": round(float(diversity), 3)}), flush=True)
        if epoch not in self.epochs:
            return
        scoring_start = time.time()
        train_seconds = round(scoring_start - self.start - self.scoring_seconds)
        device = pl_module.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for half, (images, masks, defects) in self.halves.items():
                for method, settings in self.methods.items():
                    start = time.time()
                    result = pl_module.model.invert(images.to(device), **settings)
                    scores = pl_module.model.anomaly_map(result)[:, 0].detach().cpu().numpy()
                    row = {
                        **self.row,
                        "epoch": epoch,
                        "train_s": train_seconds,
                        "half": half,
                        "method": method,
                        **map_quality(scores, masks, defects),
                        "score_s": round(time.time() - start, 1),
                    }
                    print(json.dumps(row), flush=True)
        if self.save:
            # At every scored epoch, so a run stopped by a time limit still leaves its last scored prior.
            path = Path(self.save.format(epoch=epoch))
            path.parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(path, weights_only=True)
        self.scoring_seconds += time.time() - scoring_start


def main() -> None:
    """Train one prior, score it at the chosen epochs, save it."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", default="grass")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--latent-channels", type=int, default=8)
    parser.add_argument("--latent-stride", type=int, default=8)
    parser.add_argument("--reconstruction-weight", type=float, default=10.0)
    parser.add_argument("--flips", action="store_true", help="random horizontal and vertical flips in training")
    parser.add_argument("--min-sample-diversity", type=float, default=0.2, help="0: never stop on mode collapse")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--score-epochs", type=int, nargs="+", default=None, help="default: the last epoch")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    parser.add_argument(
        "--save", default=None, help="path of the trained prior, no optimiser states; {epoch}: one per scored epoch"
    )
    parser.add_argument(
        "--finetune-variants",
        nargs="*",
        default=[],
        metavar="STEPS+FINETUNE@LR",
        help="more R-RGI scorings, e.g. 200+50@1e-4 (Adam steps, then fine-tuning steps at LR); 0+50@1e-4 starts "
        "at the encoder with the closed-form mask",
    )
    parser.add_argument(
        "--encoder-start-only",
        action="store_true",
        help="score only RGI at the encoder start (seconds): train and --save priors to score elsewhere",
    )
    parser.add_argument("--tiny", action="store_true", help="32 px crops, tiny networks: a smoke test")
    args = parser.parse_args()
    methods = {name: dict(settings) for name, settings in METHODS.items()}
    if args.encoder_start_only:
        methods = {name: settings for name, settings in methods.items() if settings.get("steps") == 0}
    for variant in args.finetune_variants:
        steps, rest = variant.split("+")
        finetune, lr = rest.split("@")
        solver = "closed_form" if int(steps) == 0 else "adam"
        name = f"R-RGI ({steps} steps +{finetune} fine-tuning, lr {float(lr):g})"
        methods[name] = {
            "steps": int(steps),
            "mask_solver": solver,
            "finetune_steps": int(finetune),
            "finetune_lr": float(lr),
        }
    if args.tiny:
        for settings in methods.values():
            settings["finetune_steps"] = min(settings["finetune_steps"], 2)
            settings["steps"] = min(settings.get("steps", 3), 3)

    seed_everything(args.seed)
    flips = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]) if args.flips else None
    data = TINY_DATA if args.tiny else {}
    # The data's own seed stays the default: it draws the validation/test split the peer table uses.
    datamodule = RgiTextures(root=args.data_root, category=args.category, train_augmentations=flips, **data)
    datamodule.prepare_data()
    network = {
        "base_channels": args.base_channels,
        "latent_channels": args.latent_channels,
        "latent_stride": args.latent_stride,
        "reconstruction_weight": args.reconstruction_weight,
        "min_sample_diversity": args.min_sample_diversity,
    }
    tiny = {key: value for key, value in TINY_RGI.items() if key not in network} if args.tiny else {}
    model = Rgi(**{**tiny, **network, "max_epochs": args.epochs})
    halves = {}
    for half in ("validation", "test"):
        images, masks = load_test_split(args.data_root, args.category, half=half)
        halves[half] = (images, masks, split_defect_types(args.data_root, args.category, half=half))
    row = {"category": args.category, "seed": args.seed, "flips": args.flips, **network}
    callback = ScoreAtEpochs(args.score_epochs or [args.epochs], halves, row, methods, args.save)
    engine = Engine(
        default_root_dir=Path("results/prior_grid") / f"{args.category}-{time.time_ns()}",
        logger=False,
        accelerator=args.accelerator,
        devices=1,
        max_epochs=args.epochs,
        callbacks=[callback],
        enable_progress_bar=False,
    )
    engine.fit(model=model, datamodule=datamodule)


if __name__ == "__main__":
    main()
