"""Export an Rgi checkpoint and PatchCore with ``anomalib export``, and time both on the line's path.

For one built-in category: exports the Rgi checkpoint to OpenVINO with the stock command (``anomalib
export --model anomalib_rgi.Rgi --export_type openvino --ckpt_path <ckpt>``), timing the build; fits
PatchCore (EfficientNet-Lite0 weights shipped offline, as ``scripts/compare_peers.py`` builds it) and
exports it the same way; then scores the category's test crops (128 px) one at a time, batch 1,
through anomalib's ``OpenVINOInferencer`` (each model in a fresh process), and prints the median and 90th percentile
ms per image of each model and their ratio. Both models run under the same OpenVINO settings
(the line's, ``anomalib_rgi.deployment.line_config``: ``--precision``, default f32, denormals flushed
unless ``--keep-denormals``; ``--threads``, default every core), after ``--warmup`` untimed images.
PatchCore's memory bank has its usual size (10 % of the training patches) but is drawn at random,
unless ``--greedy-coreset``: its scoring costs the same, and its greedy selection would take about 40
minutes here (its quality is ``scripts/compare_peers.py``'s to measure).
``--layers`` also prints the Rgi graph's slowest operation types (OpenVINO's per-layer counters).

    python scripts/benchmark_export.py --checkpoint results/.../model.ckpt --category brick --out results/export-times

Writes ``times.json`` and ``table.md`` under ``--out`` (which must not hold them yet).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import types
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from anomalib.deploy import ExportType, OpenVINOInferencer
from anomalib.engine import Engine

from anomalib_rgi import RgiTextures
from anomalib_rgi.data.textures import categories, load_test_split
from anomalib_rgi.deployment import line_config
from anomalib_rgi.reporting import machine, markdown_table

ANOMALIB = Path(sys.executable).with_name("anomalib")


def export_rgi(checkpoint: Path, out: Path) -> tuple[Path, float]:
    """Export with the stock command; return the OpenVINO model and the seconds the command took.

    Raises:
        RuntimeError: If the export fails; the message holds the end of its output.

    """
    command = [str(ANOMALIB), "export", "--model", "anomalib_rgi.Rgi", "--export_type", "openvino"]
    command += ["--ckpt_path", str(checkpoint), "--default_root_dir", str(out)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    models = sorted(out.glob("**/openvino/model.xml"))
    if result.returncode != 0 or not models:
        msg = f"anomalib export failed ({result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}"
        raise RuntimeError(msg)
    return models[0], seconds


def draw_memory_bank(model: torch.nn.Module, sampling_ratio: float, embeddings: object = None) -> None:
    """PatchCore's memory bank of its usual size, drawn at random instead of by greedy coreset selection.

    Scoring costs the same for any bank of that size; the greedy selection costs about 40 minutes of a
    2-core CPU per category (24,575 picks at 10 per second).
    """
    del embeddings
    bank = torch.vstack(model.embedding_store)
    model.embedding_store.clear()
    keep = torch.randperm(len(bank), generator=torch.Generator().manual_seed(0))[: int(len(bank) * sampling_ratio)]
    model.memory_bank = bank[keep]


def fit_and_export_patchcore(
    category: str, data_root: Path, version: int, out: Path, greedy: bool
) -> tuple[Path, float, float]:
    """Fit PatchCore on the category's training crops and export it; return the model, fit and export seconds."""
    from anomalib.models import Patchcore

    from anomalib_rgi.backbones import load_efficientnet_lite0

    model = Patchcore(backbone="efficientnet_lite0", layers=["blocks.2", "blocks.4"], pre_trained=False)
    load_efficientnet_lite0(model.model.feature_extractor.feature_extractor)
    if not greedy:
        model.model.subsample_embedding = types.MethodType(draw_memory_bank, model.model)
    datamodule = RgiTextures(root=data_root, category=category, version=version)
    engine = Engine(default_root_dir=out, accelerator="cpu", devices=1, logger=False)
    started = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    # A static batch of one: with anomalib's default dynamic batch, dynamo specialises PatchCore's graph to
    # its example batch of 2, and OpenVINOInferencer's single images are refused.
    path = engine.export(
        model=model,
        export_type=ExportType.OPENVINO,
        export_root=out / "export",
        input_size=(128, 128),
        onnx_kwargs={"dynamic_axes": {}},
    )
    return Path(path), fit_seconds, time.perf_counter() - started


def time_inferencer(model: Path, images: np.ndarray, config: dict, warmup: int) -> dict[str, float]:
    """Median and 90th-percentile ms per image of ``OpenVINOInferencer.predict``, batch 1, in a fresh process.

    A process of its own, as on the line: in this one, torch's worker threads keep spinning for a while
    after every torch operation (the export, PatchCore's fit) and take cores from OpenVINO's.
    """
    with tempfile.TemporaryDirectory() as folder:
        crops = Path(folder) / "crops.npy"
        np.save(crops, images)
        job = {"model": str(model), "crops": str(crops), "config": config, "warmup": warmup}
        command = [sys.executable, __file__, "--time-worker", json.dumps(job)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        msg = f"timing {model} failed ({result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}"
        raise RuntimeError(msg)
    return json.loads(result.stdout.strip().splitlines()[-1])


def time_worker(job: dict) -> dict[str, float]:
    """The timing itself: load the model with ``OpenVINOInferencer`` and score the crops one at a time."""
    images = np.load(job["crops"])
    inferencer = OpenVINOInferencer(path=job["model"], device="CPU", config=job["config"])
    for image in images[: job["warmup"]]:
        inferencer.predict(image)
    times = []
    for image in images:
        started = time.perf_counter()
        inferencer.predict(image)
        times.append(1000 * (time.perf_counter() - started))
    return {"median ms": float(np.median(times)), "p90 ms": float(np.percentile(times, 90))}


def slowest_layers(model: Path, image: np.ndarray, config: dict, count: int = 12) -> list[tuple[str, float]]:
    """Milliseconds per operation type of one inference (OpenVINO's performance counters), slowest first."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(model), "CPU", {**config, "PERF_COUNT": "YES"})
    request = compiled.create_infer_request()
    batch = image.transpose(2, 0, 1)[None].astype(np.float32)
    for _ in range(5):
        request.infer({0: batch})
    totals: dict[str, float] = defaultdict(float)
    for info in request.get_profiling_info():
        totals[info.node_type] += info.real_time.total_seconds() * 1000
    return sorted(totals.items(), key=lambda item: -item[1])[:count]


def main(argv: list[str] | None = None) -> int:
    """Export and time both models; write the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="an Rgi model.ckpt")
    parser.add_argument("--category", default="brick")
    parser.add_argument("--data-version", type=int, default=2, choices=(1, 2))
    parser.add_argument("--data-root", type=Path, default=Path("datasets/rgi_textures"))
    parser.add_argument("--precision", default="f32", choices=("f32", "bf16"), help="OpenVINO inference precision")
    parser.add_argument("--threads", type=int, default=None, help="OpenVINO inference threads (default: every core)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument(
        "--keep-denormals", action="store_true", help="compute denormals exactly (OpenVINO's default; slower)"
    )
    parser.add_argument("--no-patchcore", action="store_true", help="time the Rgi export only")
    parser.add_argument(
        "--greedy-coreset", action="store_true", help="select PatchCore's bank as it does (slow) instead of at random"
    )
    parser.add_argument("--layers", action="store_true", help="print the Rgi graph's slowest operation types")
    parser.add_argument("--out", type=Path, default=Path("results/export-times"))
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        parser.error(f"--checkpoint {args.checkpoint}: no such file")
    if args.category not in categories(args.data_version):
        known = list(categories(args.data_version))
        parser.error(f"--category {args.category}: version {args.data_version} has {known}")
    table = args.out / "table.md"
    if table.exists():
        parser.error(f"{args.out} already holds a table: give another --out")
    args.out.mkdir(parents=True, exist_ok=True)
    config = line_config(args.precision) | {"CPU_DENORMALS_OPTIMIZATION": not args.keep_denormals}
    if args.threads:
        config["INFERENCE_NUM_THREADS"] = args.threads
    root = args.data_root / "v2" if args.data_version == 2 else args.data_root
    RgiTextures(root=args.data_root, category=args.category, version=args.data_version).prepare_data()
    images, _ = load_test_split(root, args.category, half="test")
    crops = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, 3) in [0, 1], as the inferencer reads arrays

    rows = []
    rgi_model, export_seconds = export_rgi(args.checkpoint, args.out / "rgi")
    timed = time_inferencer(rgi_model, crops, config, args.warmup)
    rows.append({"model": "Rgi", "export s": round(export_seconds, 1), **timed})
    print(json.dumps(rows[0]), flush=True)
    if not args.no_patchcore:
        patchcore, fit_seconds, export_seconds = fit_and_export_patchcore(
            args.category, args.data_root, args.data_version, args.out / "patchcore", args.greedy_coreset
        )
        timed = time_inferencer(patchcore, crops, config, args.warmup)
        seconds = {
            "fit s": round(fit_seconds, 1) if args.greedy_coreset else None,
            "export s": round(export_seconds, 1),
        }
        rows.append({"model": "PatchCore", **seconds, **timed})
        rows[0]["ratio to PatchCore"] = round(rows[0]["median ms"] / timed["median ms"], 2)
    for row in rows:
        row |= {key: round(value, 2) for key, value in row.items() if key.endswith(" ms")}
        print(json.dumps(row), flush=True)
    header = (
        f"`python scripts/benchmark_export.py --checkpoint {args.checkpoint} --category {args.category}`; "
        f"{machine()}; OpenVINOInferencer, batch 1, {len(crops)} test crops of 128 px, {args.precision}, "
        f"denormals {'kept' if args.keep_denormals else 'flushed'}."
    )
    columns = ["model", "fit s", "export s", "median ms", "p90 ms", "ratio to PatchCore"]
    text = markdown_table(rows, columns, header)
    if args.layers:
        layers = slowest_layers(rgi_model, crops[0], config)
        text += (
            "\nRgi graph, ms per operation type (one image):\n\n"
            + "\n".join(f"- {name}: {ms:.2f}" for name, ms in layers)
            + "\n"
        )
    (args.out / "times.json").write_text(json.dumps(rows, indent=1))
    table.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--time-worker":
        print(json.dumps(time_worker(json.loads(sys.argv[2]))))
        sys.exit(0)
    sys.exit(main())
