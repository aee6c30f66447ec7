"""Fit + test a tiny Rgi through anomalib's Engine, on one or several CPU processes (DDP, gloo).

Run by tests/test_reliability.py as a script: Lightning's DDP launcher starts the other processes by
re-running this command line. Every process writes the test images it scored to
``OUT/scored-rank<R>.json``; process 0 writes ``OUT/metrics.json`` (and the checkpoint under ``OUT/run``).

    python tests/ddp_job.py DATA_ROOT OUT --devices 2 [--ckpt CHECKPOINT]   (--ckpt: test only)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from anomalib.engine import Engine
from lightning.pytorch import Callback, seed_everything

from anomalib_rgi import Rgi, RgiTextures

TINY_MODEL = {"image_size": 32, "prior": {"latent_stride": 4, "latent_channels": 4, "base_channels": 4}, "steps": 3}
TINY_DATA = {"crop_size": 32, "num_train": 16, "num_test_good": 5, "num_test_defective": 4}


class RecordScoredImages(Callback):
    """Write the paths of the test images this process scored."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.paths: list[str] = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        del trainer, pl_module, outputs, batch_idx, dataloader_idx
        self.paths.extend(str(path) for path in batch.image_path)

    def on_test_end(self, trainer, pl_module) -> None:
        del pl_module
        (self.out / f"scored-rank{trainer.global_rank}.json").write_text(json.dumps(self.paths))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data_root", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--ckpt", default=None)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    seed_everything(0, workers=True)
    datamodule = RgiTextures(root=args.data_root, category="grass", train_batch_size=4, eval_batch_size=2, **TINY_DATA)
    model = Rgi(**TINY_MODEL, max_epochs=args.epochs)
    engine = Engine(
        default_root_dir=args.out / "run",
        logger=False,
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        callbacks=[RecordScoredImages(args.out)],
    )
    if args.ckpt is None:
        engine.fit(model=model, datamodule=datamodule)
    metrics = engine.test(model=model, datamodule=datamodule, ckpt_path=args.ckpt)[0]
    if engine.trainer.global_rank == 0:
        (args.out / "metrics.json").write_text(json.dumps(metrics))
        if args.ckpt is None:
            (args.out / "trained_steps.txt").write_text(str(int(model.model.trained_steps)))


if __name__ == "__main__":
    main()
