"""What OpenVINO's compression types do to an exported Rgi model (issue #5, deployment).

``anomalib export --export_type openvino --compression_type {FP16,INT8,INT8_PTQ,INT8_ACQ}`` are the
host's ways to shrink a model for the line. For one checkpoint this exports the graph once per type
(``Rgi.to_openvino``, as the CLI does; INT8_PTQ / INT8_ACQ calibrate on the datamodule's validation
half), scores both halves of the built-in test crops with each and prints, per type: file size,
ms per image (batch 1, 2 threads, fastest of 3 passes), pixel AUROC, best-threshold dataset Dice,
dataset Dice at the model's threshold, image AUROC and the largest difference of its anomaly maps
from the uncompressed export's. ``--precisions f32 bf16 default`` also scores each export at other
OpenVINO CPU inference precisions (``default``: OpenVINO's own choice, bf16 on CPUs with bf16 units).

    python experiments/compression.py --checkpoint results/.../model.ckpt --category brick \
        --out docs/results/compression-2026-11-28
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from anomalib.deploy import CompressionType
from sklearn.metrics import roc_auc_score

from anomalib_rgi import Rgi, RgiTextures
from anomalib_rgi.data.textures import load_test_split
from anomalib_rgi.metrics import best_dataset_dice

TYPES = ("none", "FP16", "INT8", "INT8_PTQ", "INT8_ACQ")


def export(model: Rgi, compression: str, root: Path, datamodule: RgiTextures) -> tuple[Path, float]:
    """Export one compression type; return the ``.xml`` and the export's seconds."""
    start = time.perf_counter()
    xml = model.to_openvino(
        root / compression,
        compression_type=None if compression == "none" else CompressionType[compression],
        datamodule=datamodule if compression.startswith("INT8_") else None,
    )
    return xml, time.perf_counter() - start


def score(xml: Path, images: torch.Tensor, threads: int, repeats: int, precision: str) -> tuple[np.ndarray, ...]:
    """Anomaly maps, predicted masks, scores (batch 1) and the mean ms per image of the fastest pass."""
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": threads} | (
        {} if precision == "default" else {"INFERENCE_PRECISION_HINT": precision}
    )
    compiled = ov.Core().compile_model(str(xml), "CPU", config)
    compiled(images[:1].numpy())  # first call compiles kernels
    passes = []
    for _ in range(repeats):
        maps, predicted, scores, seconds = [], [], [], 0.0
        for image in images:
            start = time.perf_counter()
            outputs = compiled(image[None].numpy())
            seconds += time.perf_counter() - start
            maps.append(outputs["anomaly_map"].reshape(images.shape[-2:]))
            predicted.append(outputs["pred_mask"].reshape(images.shape[-2:]).astype(bool))
            scores.append(float(outputs["pred_score"].reshape(-1)[0]))
        passes.append(seconds)
    return np.stack(maps), np.stack(predicted), np.array(scores), 1000 * min(passes) / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--category", default="brick")
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    parser.add_argument("--types", nargs="+", default=list(TYPES), choices=TYPES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["f32"],
        help="OpenVINO CPU inference precisions to score each export with (default: OpenVINO's own choice)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over each half (the fastest counts)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.types[0] != "none" or args.precisions[0] != "f32":
        parser.error("--types must start with none and --precisions with f32: the others are compared with them")

    torch.set_num_threads(args.threads)
    model = Rgi.load_from_checkpoint(args.checkpoint).eval()
    datamodule = RgiTextures(root=args.data_root, category=args.category)
    halves = {half: load_test_split(args.data_root, args.category, half=half) for half in ("validation", "test")}
    args.out.mkdir(parents=True, exist_ok=True)
    rows_path = args.out / f"rows-{args.category}.jsonl"
    reference: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for compression in args.types:
            xml, export_seconds = export(model, compression, Path(scratch), datamodule)
            row = {
                "category": args.category,
                "checkpoint": args.checkpoint,
                "compression": compression,
                "export_s": round(export_seconds, 1),
                "bin_mb": round(xml.with_suffix(".bin").stat().st_size / 2**20, 2),
                "machine": f"{platform.machine()}, {args.threads} threads",
            }
            for precision, (half, (images, masks)) in itertools.product(args.precisions, halves.items()):
                maps, predicted, scores, ms = score(xml, images, args.threads, args.repeats, precision)
                labels = masks.reshape(len(masks), -1).any(axis=1)
                reference.setdefault(half, maps)
                row[half if precision == "f32" else f"{half}-{precision}"] = {
                    "ms_per_image": round(ms, 1),
                    "pixel_auroc": round(float(roc_auc_score(masks.ravel(), maps.ravel())), 4),
                    "best_dice": round(best_dataset_dice(maps, masks), 4),
                    # the thresholds were learned on the uncompressed computation: what the line sees
                    "dice_at_threshold": round(2 * (predicted & masks).sum() / (predicted.sum() + masks.sum()), 4),
                    "image_auroc": round(float(roc_auc_score(labels, scores)), 4),
                    "max_map_difference": round(float(np.abs(maps - reference[half]).max()), 4),
                }
            print(json.dumps(row), flush=True)
            with rows_path.open("a") as rows:
                rows.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
