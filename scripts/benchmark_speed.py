"""Speed and quality of the inversion budgets of issue #3, on the machine it runs on.

For one trained Rgi checkpoint and the built-in test crops of its category, prints per method:
ms per 128 x 128 image at batch 1 and at the best of a few batch sizes, peak resident memory of a
fresh process, pixel AUROC and best-threshold dataset-level Dice (F1Max) of the anomaly maps:

- (a) eager PyTorch, the authors' step budget (``--long-steps``, default 2000) with the checkpoint's
  own solver settings (its maps are computed at the largest batch, its batch-1 latency on one image:
  2000 steps cost about 15 s per image on 2 CPU cores);
- (b) eager PyTorch, the line's budget: the solver settings of ``--preset`` (default
  ``configs/rgi.yaml``: steps, learning rates, mask solver, lam) applied to the checkpoint, and
  a fixed anomaly map the preset names (``anomaly_map``, ``feature_weight``; a feature part the prior
  was fitted without is prepared on the training crops, as ``Rgi`` does at test start); a preset that
  chooses its map on validation scores with the checkpoint's own choice;
- (c) the same exported to OpenVINO with the line's settings (``deployment.line_config``), the graph
  ``anomalib export`` writes.

For the eager methods it also prints the time of one generator forward + input-gradient backward
(the floor of one step), the loop's own time per step (batch-1 latency at the budget minus that at
one step, over the steps between) and their ratio, the share of the loop spent in the generator.

    python scripts/benchmark_speed.py --checkpoint results/.../model.ckpt --category brick
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score

from anomalib_rgi.reporting import markdown_table, preset

BATCHES = (1, 4, 16)
LONG = 100  # above this many steps a method is timed on one image at batch 1, not on all


def measure(method: str, args: dict) -> dict:
    """Run one method (in a fresh process, so that its peak memory is its own) and report."""
    from anomalib_rgi import Rgi
    from anomalib_rgi.data.textures import load_test_split, train_image_paths
    from anomalib_rgi.inpainting import load_images
    from anomalib_rgi.metrics import best_dataset_dice

    torch.set_num_threads(args["threads"])
    model = Rgi.load_from_checkpoint(args["checkpoint"], **args["map"]).eval()
    model.model.inversion.update(args["settings"])
    # As Rgi prepares a map the prior was fitted without; a prepared checkpoint keeps its parts.
    if model.model.unprepared_parts:
        good = load_images(train_image_paths(args["data_root"], args["category"], limit=512), model.model.input_size)
        model.model.prepare_feature_parts(good)
    steps = model.model.inversion["steps"]
    images, masks = load_test_split(args["data_root"], args["category"], args["images"])
    batches = [batch for batch in BATCHES if batch <= len(images)]
    if method == "openvino":
        import openvino as ov

        from anomalib_rgi.deployment import line_config
        from anomalib_rgi.models.rgi.export import keep_only_output_names, trace_unrolled

        core = ov.Core()
        compiled = {}

        def score(x: torch.Tensor) -> torch.Tensor:
            return model.model.anomaly_map(model.model.invert(x))

        def run(x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] not in compiled:  # one graph per batch size, compiled before it is timed
                with tempfile.TemporaryDirectory() as folder:
                    graph = trace_unrolled(score, x).eval()
                    path = Path(folder) / "model.onnx"
                    torch.onnx.export(graph, (x,), str(path), input_names=["input"], dynamo=True)
                    xml = path.with_suffix(".xml")
                    ov.save_model(ov.convert_model(path), xml, compress_to_fp16=False)
                    keep_only_output_names(xml)
                    compiled[x.shape[0]] = core.compile_model(xml, "CPU", line_config())
            return torch.from_numpy(compiled[x.shape[0]](x.numpy())[0])
    else:

        def run(x: torch.Tensor) -> torch.Tensor:
            return model.model.anomaly_map(model.model.invert(x))

    # The maps come from one pass at the largest batch (timed: throughput); batch-1 latency is timed
    # on every image. A long budget skips the warm-ups and times batch 1 on one image only (2000
    # steps amortise any first-call cost), which keeps it affordable on a CPU.
    short = steps <= LONG
    largest = batches[-1]
    for batch in {largest, len(images) % largest, 1} - {0} if short else ():
        run(images[:batch])  # warm-up (and OpenVINO's compilation) for every shape timed below
    start = time.perf_counter()
    maps = torch.cat([run(images[i : i + largest]) for i in range(0, len(images), largest)])[:, 0].numpy()
    timings = {largest: 1000 * (time.perf_counter() - start) / len(images)}
    latency_images = len(images) if short else 1

    def latency() -> float:
        start = time.perf_counter()
        for i in range(latency_images):
            run(images[i : i + 1])
        return 1000 * (time.perf_counter() - start) / latency_images

    timings[1] = latency()
    for batch in batches[1:-1] if short else ():
        run(images[:batch])
        start = time.perf_counter()
        run(images[:batch])
        timings[batch] = 1000 * (time.perf_counter() - start) / batch
    loop = {}
    if method == "eager" and steps > 1:
        # The loop's own cost per step: batch-1 latency at `steps` minus that at one step, over the
        # steps between (the encoder start, the map and the post-processing cancel out).
        model.model.inversion["steps"] = 1
        one_step = latency()
        model.model.inversion["steps"] = steps
        per_step = (timings[1] - one_step) / (steps - 1)
        floor = generator_step_floor(model.model.generator)
        loop = {"loop_ms_per_step": round(per_step, 2), "floor_ms": round(floor, 2)}
        loop["share_in_generator"] = round(min(1.0, floor / per_step), 2)
    return {
        **loop,
        "ms_per_image_batch1": round(timings[1], 1),
        "ms_per_image_best": round(min(timings.values()), 1),
        "best_batch": min(timings, key=timings.get),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "pixel_auroc": round(float(roc_auc_score(masks.ravel(), maps.ravel())), 4),
        "best_dataset_dice": round(best_dataset_dice(maps, masks), 4),
    }


def generator_step_floor(generator: torch.nn.Module) -> float:
    """Milliseconds of one generator forward + backward to the latent, batch 1: one step's floor."""
    latent = generator.sample_latent(1).requires_grad_(True)
    for _ in range(5):
        torch.autograd.grad(generator(latent).square().sum(), latent)
    start = time.perf_counter()
    for _ in range(50):
        torch.autograd.grad(generator(latent).square().sum(), latent)
    return 1000 * (time.perf_counter() - start) / 50


def main() -> None:
    """Run (a), (b), (c) and print a markdown table."""
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        job = json.loads(sys.argv[2])
        print(json.dumps(measure(job["method"], job["args"])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--category", default="brick")
    parser.add_argument("--data-root", default="datasets/rgi_textures")
    parser.add_argument("--images", type=int, default=32, help="test crops used (every k-th)")
    parser.add_argument("--long-steps", type=int, default=2000, help="0 skips (a)")
    parser.add_argument("--preset", default=str(Path(__file__).parents[1] / "configs" / "rgi.yaml"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default="results/speed")
    args = parser.parse_args()

    common = {
        "checkpoint": args.checkpoint,
        "category": args.category,
        "data_root": args.data_root,
        "images": args.images,
        "threads": args.threads,
    }
    line, line_map = preset(args.preset)
    line_name = ", ".join(f"{key} {value}" for key, value in {**line, **line_map}.items())
    long = {f"(a) eager, {args.long_steps} steps": ("eager", {"steps": args.long_steps}, {})}
    methods = {
        **(long if args.long_steps else {}),
        f"(b) eager, line's budget ({line_name})": ("eager", line, line_map),
        f"(c) OpenVINO f32, line's budget ({line_name})": ("openvino", line, line_map),
    }
    rows = []
    for name, (method, settings, scoring_map) in methods.items():
        worker = json.dumps({"method": method, "args": {**common, "settings": settings, "map": scoring_map}})
        result = subprocess.run(
            [sys.executable, __file__, "--worker", worker], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{result.stderr[-3000:]}")
        row = {"method": name, **json.loads(result.stdout.strip().splitlines()[-1])}
        rows.append(row)
        print(json.dumps(row), flush=True)

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M-%SZ")
    header = (
        f"Speed benchmark {stamp}, {platform.machine()}, {args.threads} threads, torch {torch.__version__}; "
        f"category {args.category}, {args.images} test crops at 128 px; share_in_generator = floor_ms (one "
        "generator forward + backward, batch 1) / loop_ms_per_step"
    )
    columns = [
        "method",
        "ms_per_image_batch1",
        "ms_per_image_best",
        "best_batch",
        "peak_rss_mb",
        "pixel_auroc",
        "best_dataset_dice",
        "loop_ms_per_step",
        "floor_ms",
        "share_in_generator",
    ]
    table = markdown_table(rows, columns, header)
    out = Path(args.out) / stamp
    out.mkdir(parents=True, exist_ok=False)
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print(table)


if __name__ == "__main__":
    main()
