"""Where an exported Rgi graph spends its time: the same checkpoint exported with parts left out.

    python research/probes/export_parts.py CKPT --out DIR [--repeats 100] [--steps 1 2 5]

Exports the checkpoint's model to OpenVINO as it is (its solver steps and its chosen map), then with
0 solver steps (the closed-form mask of the start) and each of ``--steps``, then with each weighted
part of its map left out, and times each graph on one random 128 px image, batch 1, f32, after 10 untimed calls. The
differences between rows are what each piece costs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import openvino as ov
import torch
from select_map import prepared_model

from anomalib_rgi import Rgi
from anomalib_rgi.models.rgi.anomaly_map import ADDED_PARTS, describe_map, score_settings


def time_graph(xml: Path, repeats: int) -> float:
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    image = np.random.default_rng(0).random((1, 3, 128, 128), dtype=np.float32)
    request = compiled.create_infer_request()
    for _ in range(10):
        request.infer({0: image})
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        request.infer({0: image})
        times.append(1000 * (time.perf_counter() - started))
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--steps", type=int, nargs="*", default=[], help="further solver step counts to time")
    parser.add_argument("--mask-solver", default="adam", choices=("adam", "closed_form"), help="for --steps")
    parser.add_argument("--only-steps", action="store_true", help="time only the --steps graphs")
    parser.add_argument("--data-root", help="prepare parts the checkpoint predates on this data's training crops")
    parser.add_argument("--category", default="brick")
    args = parser.parse_args()
    if args.data_root:
        model = prepared_model(args.checkpoint, args.data_root, args.category)
    else:
        model = Rgi.load_from_checkpoint(args.checkpoint, map_location="cpu").eval()
    anomaly_map = model.model.anomaly_map
    shipped = dict(anomaly_map.settings)
    weighted = sorted(anomaly_map.weighted_parts())
    variants = {
        "as fitted": ({}, shipped),
        "0 steps (closed-form mask)": ({"steps": 0, "mask_solver": "closed_form"}, shipped),
    }
    if args.only_steps:
        variants = {}
    for steps in args.steps:
        variants[f"{steps} steps, {args.mask_solver}"] = ({"steps": steps, "mask_solver": args.mask_solver}, shipped)
    for part in weighted if not args.only_steps else []:
        without = shipped | {part: 0.0} | {f"score_{part}": 0.0}
        variants[f"without {part}"] = ({}, without)
    if not args.only_steps:
        variants["mask alone"] = (
            {},
            shipped | dict.fromkeys(ADDED_PARTS, 0.0) | {f"score_{p}": 0.0 for p in ADDED_PARTS},
        )
    solver = dict(model.model.inversion)
    print("map as fitted:", describe_map(shipped), "| image score:", describe_map(score_settings(shipped)))
    for name, (overrides, settings) in variants.items():
        model.model.inversion.update(overrides)
        anomaly_map.set_settings(settings)
        folder = args.out / name.replace(" ", "-").replace("(", "").replace(")", "")
        with torch.no_grad():
            xml = model.to_openvino(folder)
        print(f"| {name} | {time_graph(Path(xml), args.repeats):.2f} ms |", flush=True)
        model.model.inversion.clear()
        model.model.inversion.update(solver)
        anomaly_map.set_settings(shipped)


if __name__ == "__main__":
    main()
