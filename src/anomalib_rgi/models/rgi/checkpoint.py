"""Read Rgi checkpoints, refusing other models' and incompatible ones with a message that says what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from anomalib.utils.serialization import anomalib_safe_globals

from .anomaly_map import ADDED_PARTS, FEATURE_PARTS, FLOORS, SCORE_OF, SCORE_PARTS, SETTING_NAMES
from .settings import PRIOR_DEFAULTS

# The prior's architecture: a checkpoint's networks load only into a model built with the same values.
ARCHITECTURE_KEYS = ("latent_stride", "latent_channels", "base_channels")
# Arguments only checkpoints written before the map was named by ``anomaly_map`` have.
FORMER_ARGUMENTS = ("feature_weights", "feature_prior_weight", "latent_stride", "inversion_lr", "mask_floor")


def architecture(hyper_parameters: dict[str, Any]) -> dict[str, Any]:
    """Return the image size and network widths a model with these hyperparameters builds."""
    prior = {**PRIOR_DEFAULTS, **(hyper_parameters.get("prior") or {})}
    return {"image_size": hyper_parameters.get("image_size", 128), **{key: prior[key] for key in ARCHITECTURE_KEYS}}


def check_rgi_checkpoint(checkpoint: dict[str, Any], expected: dict[str, Any] | None = None) -> None:
    """Refuse a checkpoint that is not a current Rgi one, or whose networks differ from ``expected``'s.

    Args:
        checkpoint (dict[str, Any]): A loaded Lightning checkpoint.
        expected (dict[str, Any] | None): Hyperparameters of the model that will receive it.

    Raises:
        ValueError: With what the checkpoint is and what to do instead.

    """
    state = checkpoint.get("state_dict", {})
    saved = checkpoint.get("hyper_parameters", {})
    if not any(key.startswith("model.generator.") for key in state):
        saved_by = saved.get("_class_path") or "another model"
        msg = (
            f"This checkpoint was not written by Rgi (it holds no generator weights; saved by {saved_by}). "
            "Use the checkpoint of an Rgi run, e.g. results/Rgi/<data>/<category>/latest/weights/lightning/model.ckpt."
        )
        raise ValueError(msg)
    if former := [name for name in FORMER_ARGUMENTS if name in saved]:
        msg = (
            f"This checkpoint was written by anomalib-rgi 0.1 (arguments {former}), whose map settings this "
            "version names differently (anomaly_map, feature_weight, prior, solver): fit the prior again with a "
            "current config (configs/*.yaml), or score it with anomalib-rgi 0.1."
        )
        raise ValueError(msg)
    if expected is not None:
        own, theirs = architecture(expected), architecture(saved)
        differing = {key: theirs[key] for key in own if theirs[key] != own[key]}
        if differing:
            given = {key: own[key] for key in differing}
            msg = (
                f"The checkpoint's networks were built with {differing}, this model with {given}. "
                "Build the model with the checkpoint's settings (e.g. pass the run's config.yaml)."
            )
            raise ValueError(msg)


def read_checkpoint(path: str | Path, safe_globals: list) -> dict[str, Any]:
    """Load a checkpoint's contents (memory-mapped), refusing missing files and other models clearly.

    Raises:
        FileNotFoundError: If there is no such file.
        ValueError: If it is not a current Rgi checkpoint.

    """
    path = Path(path)
    if not path.is_file():
        msg = f"Checkpoint {path} does not exist."
        raise FileNotFoundError(msg)
    with anomalib_safe_globals(extra=safe_globals):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    check_rgi_checkpoint(checkpoint)
    return checkpoint


# The map settings buffers of earlier versions, by length: the ImageNet-feature weights and the floor,
# then (from the second) the image score's weights, then (the third) the coarse residual's weights
# without its floor; the last entry of each marks a learned floor.
FORMER_SETTINGS = {
    len(FEATURE_PARTS) + 2: (*FEATURE_PARTS, "mask_floor"),
    2 * len(FEATURE_PARTS) + 2: (*FEATURE_PARTS, "mask_floor", *(SCORE_OF[part] for part in FEATURE_PARTS)),
    2 * len(ADDED_PARTS) + 2: (*ADDED_PARTS, "mask_floor", *SCORE_PARTS),
}


def current_settings_buffer(saved: torch.Tensor) -> torch.Tensor:
    """Return a map settings buffer in this version's layout (:data:`~.anomaly_map.SETTING_NAMES`, learned).

    Parts an earlier version did not have weigh 0, and a floor it did not learn is 0; without saved
    image-score weights the image score weighs the parts as the pixel map does (as those versions scored).
    """
    if len(saved) == len(SETTING_NAMES) + 1:
        return saved.clone()
    names = FORMER_SETTINGS.get(len(saved))
    if names is None:
        msg = f"The checkpoint's map settings have {len(saved)} entries, which no version of anomalib-rgi wrote."
        raise ValueError(msg)
    values = dict(zip(names, saved[:-1].tolist(), strict=True))
    for part, score in SCORE_OF.items():
        values.setdefault(score, values.get(part, 0.0))
    return torch.tensor([*(values.get(name, 0.0) for name in SETTING_NAMES), float(saved[-1])], dtype=saved.dtype)


def match_map_state(
    state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], fixed_map: bool, floor_learned: bool
) -> bool:
    """Let a prior be scored with whichever map a model names, whatever it was fitted with (in place).

    The feature network's weights are fixed ImageNet ones: a checkpoint without them gets the model's;
    one with them, loaded into a model without that part, drops them. An earlier version's feature
    prior (an autoencoder) is dropped, and this version's is fitted when scoring starts; an earlier
    coarse residual (a square window, one level per channel) is prepared again the same way. A part the
    prior was fitted without has no calibrated scale (NaN: scoring prepares it on the training
    images). A fixed map keeps the model's own weights; a map chosen on validation and a learned floor
    come from ``state``.

    Args:
        state (dict[str, torch.Tensor]): The checkpoint's state dict.
        own (dict[str, torch.Tensor]): The receiving model's state dict.
        fixed_map (bool): The model names its map (not ``best_on_validation``).
        floor_learned (bool): The model learns its mask floor (``mask_floor_quantile > 0``).

    Returns:
        bool: Whether the model will score with another map than the checkpoint's thresholds were
        learned for (they must then be learned again).

    """
    prefix = "model.anomaly_map."
    own = {name: value for name, value in own.items() if name.startswith(prefix)}
    # Parts an earlier version built otherwise are dropped: the receiving model's take their place,
    # unprepared (scale NaN), and scoring fits and calibrates them on the training images.
    coarse_centre = f"{prefix}coarse_residual.centre"
    outdated = {
        "feature_prior": f"{prefix}feature_prior.encoder.0.weight" in state,  # an autoencoder
        "coarse_residual": (  # a square window, one level per channel
            coarse_centre in state and coarse_centre in own and state[coarse_centre].shape != own[coarse_centre].shape
        ),
    }
    for part in [part for part, earlier in outdated.items() if earlier]:
        for name in [name for name in state if name.startswith(f"{prefix}{part}.")]:
            del state[name]
        if (scale := f"{prefix}{part}.scale") in own:
            state[scale] = torch.full_like(own[scale], float("nan"))
    for name in [name for name in state if name.startswith(prefix) and name not in own]:
        del state[name]
    for name, value in own.items():
        state.setdefault(name, value)
    saved = current_settings_buffer(state[f"{prefix}saved_settings"])  # weights, floors, score weights, learned
    before = saved.clone()
    floor = SETTING_NAMES.index("mask_floor")
    floors = [SETTING_NAMES.index(name) for name in FLOORS]
    if fixed_map:
        weights = [index for index in range(len(SETTING_NAMES)) if index not in floors]
        saved[weights] = own[f"{prefix}saved_settings"][weights]
    if not floor_learned:
        saved[floors] = 0.0
        saved[-1] = 0.0
    elif not saved[-1]:
        saved[floor] = float("nan")  # fitted without a floor: scoring refuses rather than use none
    changed = not torch.equal(saved[:-1], before[:-1])
    state[f"{prefix}saved_settings"] = saved
    return changed
