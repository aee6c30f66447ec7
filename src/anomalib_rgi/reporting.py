"""What the user scripts share: the scoring variants, a preset's settings, table rendering, the machine's name.

``scripts/compare_peers.py``, ``scripts/report_peers.py``, ``scripts/benchmark_speed.py`` and
``scripts/compare_inpainting.py`` import these, so a variant or a table means the same in each.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path
from typing import Any

import torch
import yaml

from anomalib_rgi.data import categories

# anomalib's test metrics a peer comparison reports, and its table's columns.
PEER_METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "pixel_Dice", "pixel_F1Max", "pixel_PerImageBestDice")
# The test metrics a fit's benchmark reports (scripts/benchmark_fit.py and the lab's summaries of it).
FIT_METRICS = (
    "pixel_AUROC",
    "pixel_AUPRO",
    "pixel_Dice",
    "pixel_F1Max",
    "pixel_PerImageBestDice",
    "image_AUROC",
    "image_FalseAlarmRate",
    "image_EscapeRate",
)
PEER_COLUMNS = ["category", "model", "map", *PEER_METRICS, "fit_s", "ms_per_image", "score_ms_per_image", "peak_rss_mb"]
# The solver settings a config may give Rgi, as arguments of its own or in its ``solver`` group.
PRESET_SOLVER_KEYS = ("lam", "steps", "lr", "mask_lr", "mask_solver")


def machine() -> str:
    """Return one line naming the machine the figures come from."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    return f"{platform.processor() or platform.machine()}, {device}, torch {torch.__version__}"


def category_checkpoint(text: str) -> tuple[str, str]:
    """Parse ``CATEGORY=CKPT`` (a command-line value naming a built-in category's trained prior).

    Raises:
        argparse.ArgumentTypeError: If the category is unknown or the file does not exist.

    """
    category, separator, path = text.partition("=")
    if not separator or category not in categories(2) or not Path(path).is_file():
        msg = f"expected CATEGORY=CKPT with CATEGORY in {categories(2)} and an existing file, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return category, path


def preset(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the solver settings (the solver's names) and the map arguments a config gives Rgi.

    A config whose map is ``best_on_validation`` gives no map arguments: its map is the one each fit
    chose and saved in its checkpoint, which a checkpoint scored with the config's solver keeps.

    Args:
        path (str | Path): An ``anomalib train`` config, e.g. ``configs/rgi.yaml``.

    Returns:
        tuple[dict[str, Any], dict[str, Any]]: ``({"steps": 2, "lr": 0.3, ...}, {"anomaly_map": ...,
        "feature_weight": ...})``.

    """
    init_args = yaml.safe_load(Path(path).read_text())["model"]["init_args"]
    given = {**init_args, **(init_args.get("solver") or {})}
    solver = {key: given[key] for key in PRESET_SOLVER_KEYS if key in given}
    if init_args.get("anomaly_map") == "best_on_validation":
        return solver, {}
    scoring_map = {key: init_args[key] for key in ("anomaly_map", "feature_weight") if key in init_args}
    return solver, scoring_map


def scoring_variants(steps: int, finetune_steps: int, default_solver: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return the ways one trained prior is scored in comparisons, each as inversion settings.

    Args:
        steps (int): The prior's own latent steps.
        finetune_steps (int): R-RGI's fine-tuning steps.
        default_solver (dict[str, Any]): The default config's solver settings (:func:`preset` of
            ``configs/rgi.yaml``), the line's budget.

    Returns:
        dict[str, dict[str, Any]]: Settings by the variant's name.

    """
    return {
        "RGI": {"mask_solver": "adam", "steps": steps, "finetune_steps": 0},
        "R-RGI": {"mask_solver": "adam", "steps": steps, "finetune_steps": finetune_steps},
        "R-RGI, 0 steps (encoder start, closed-form mask)": {
            "mask_solver": "closed_form",
            "steps": 0,
            "finetune_steps": finetune_steps,
        },
        "RGI, 0 steps (encoder start, closed-form mask)": {
            "mask_solver": "closed_form",
            "steps": 0,
            "finetune_steps": 0,
        },
        "RGI, the default's solver (rgi.yaml)": {**default_solver, "finetune_steps": 0},
        "plain inversion (AnoGAN-style)": {"mask_solver": "none", "steps": steps, "finetune_steps": 0},
        "encoder residual (f-AnoGAN-style)": {"mask_solver": "none", "steps": 0, "finetune_steps": 0},
    }


def markdown_table(rows: list[dict[str, Any]], columns: list[str], header: str) -> str:
    """Render rows as a markdown table under a header line (``n/a`` where a row has no value)."""
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append(
            "| " + " | ".join("n/a" if row.get(column) is None else str(row[column]) for column in columns) + " |"
        )
    return "\n".join(lines) + "\n"
