"""Rgi's settings: the advanced groups' defaults and the checks that refuse bad values in the constructor."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from .torch_model import SOLVER_DEFAULTS

# The GAN prior's architecture and training (Rgi's ``prior`` argument).
PRIOR_DEFAULTS: dict[str, Any] = {
    "latent_stride": 8,
    "latent_channels": 8,
    "base_channels": 8,
    "lr": 2e-4,
    "adversarial_weight": 1.0,
    "reconstruction_weight": 10.0,
    "min_sample_diversity": 0.2,
    "collapse_patience": 20,
    "faint_corruptions": False,
}
# Prior settings earlier versions had: configs and checkpoints that give one still load, without it.
RETIRED_PRIOR = {"feature_prior_steps": "the feature prior is now fitted in closed form, in about a second"}
SOLVER_ARGUMENTS = ("lam", "steps", "finetune_steps")  # solver settings that are Rgi arguments of their own
ADVANCED_SOLVER = {
    **{name: value for name, value in SOLVER_DEFAULTS.items() if name not in SOLVER_ARGUMENTS},
    "latent_init": "encoder",
    "pool_size": 256,
}


def plain(value: Any) -> Any:  # noqa: ANN401  (any config value)
    """Return ``value`` with mappings as dicts and sequences as lists, recursively.

    anomalib's ``get_model`` (and so ``anomalib benchmark``) passes OmegaConf containers; the
    checkpoint's hyperparameters must be plain types to load with ``weights_only``.
    """
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [plain(item) for item in value]
    return value


def without_retired(prior: dict[str, Any] | None) -> dict[str, Any] | None:
    """Return ``prior`` without the settings earlier versions had, warning about each one given."""
    if not isinstance(prior, dict):
        return prior
    for name in sorted(set(prior) & set(RETIRED_PRIOR)):
        warnings.warn(f"prior setting {name!r} is no longer used: {RETIRED_PRIOR[name]}.", FutureWarning, stacklevel=3)
    return {name: value for name, value in prior.items() if name not in RETIRED_PRIOR}


def advanced_settings(name: str, given: dict[str, Any] | None, defaults: dict[str, Any]) -> dict[str, Any]:
    """Merge a group of advanced settings over its defaults, refusing unknown names."""
    if given is not None and not isinstance(given, Mapping):
        msg = f"{name} must be a mapping of settings (e.g. {{{next(iter(defaults))}: ...}}), got {given!r}."
        raise ValueError(msg)
    unknown = sorted(set(given or {}) - set(defaults))
    if unknown:
        own = [key for key in unknown if key in SOLVER_ARGUMENTS]
        hint = f" ({', '.join(own)}: an Rgi argument of its own)" if own else ""
        msg = f"Unknown {name} settings {unknown}{hint}; the settings are {sorted(defaults)}."
        raise ValueError(msg)
    return {**defaults, **(given or {})}


def check_arguments(max_epochs: int, quantile: float, every: int, prior: dict[str, Any]) -> None:
    """Refuse invalid training and map settings before anything is built.

    Raises:
        ValueError: Naming the setting, the value and what is valid.

    """
    if max_epochs < 1:
        msg = f"max_epochs must be at least 1, got {max_epochs}."
        raise ValueError(msg)
    if not 0 <= quantile < 1:
        msg = f"mask_floor_quantile must be in [0, 1) (0: no mask floor), got {quantile}."
        raise ValueError(msg)
    if every < 0 or (every and max_epochs % every):
        msg = (
            f"select_epoch_every must be 0 (keep the last epoch) or divide max_epochs={max_epochs}, got "
            f"{every}: the last epoch must be validated for its thresholds."
        )
        raise ValueError(msg)
    if prior["collapse_patience"] < 1:
        msg = f"prior collapse_patience must be at least 1, got {prior['collapse_patience']}."
        raise ValueError(msg)
    for name in ("lr", "adversarial_weight", "reconstruction_weight"):
        if not prior[name] >= 0 or (name == "lr" and not prior[name] > 0):
            msg = f"prior {name} must be {'positive' if name == 'lr' else '0 or positive'}, got {prior[name]}."
            raise ValueError(msg)
