"""Mean and spread over seeds of ``scripts/benchmark_fit.py`` rows, per category.

    python research/probes/summarise_fits.py RUN/rows.json [RUN/rows.json ...]

Prints one markdown row per category: each figure as ``mean ± half the range`` over the seeds (the
seeds themselves after it), the fit's stage times likewise, and the number of seeds.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from anomalib_rgi.reporting import FIT_METRICS

TIMES = ("fit", "test")


def cell(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    spread = (max(values) - min(values)) / 2
    each = ", ".join(f"{value:.{digits}f}" for value in values)
    return f"{mean:.{digits}f} ± {spread:.{digits}f} ({each})" if len(values) > 1 else f"{mean:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("rows", nargs="+", type=Path)
    args = parser.parse_args()
    by_category: dict[str, list[dict]] = defaultdict(list)
    for path in args.rows:
        for row in json.loads(path.read_text()):
            by_category[row["category"]].append(row)
    columns = [*FIT_METRICS, *(f"{name} s" for name in TIMES)]
    print("| category | seeds | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for category, rows in by_category.items():
        figures = [cell([row[name] for row in rows if name in row], 3) for name in FIT_METRICS]
        times = [cell([row[name] for row in rows if name in row], 0) for name in TIMES]
        seeds = ", ".join(str(row["seed"]) for row in rows)
        print(f"| {category} | {seeds} | " + " | ".join(figures + times) + " |")


if __name__ == "__main__":
    main()
