"""RGI / R-RGI: robust GAN inversion for pixel-wise anomaly detection and mask-free inpainting.

Layout, as anomalib's own models: ``lightning_model`` (the Lightning glue), ``torch_model`` (the
networks and the inference), ``loss`` (the GAN's losses); then ``inversion`` (the solver, a plain
function of tensors), ``networks``, ``feature_parts`` and ``anomaly_map`` (what the map is made of),
``map_selection`` and ``callbacks`` (what a fit learns on validation), ``tiling``, ``export``,
``checkpoint`` and ``settings``.
"""

from .anomaly_map import MAP_KINDS, AnomalyMap
from .callbacks import ModeCollapseError
from .export import ExportTooSlowError
from .inversion import InversionResult, best_of_pool, closed_form_mask, invert
from .lightning_model import PriorDivergedError, Rgi
from .torch_model import RgiModel

__all__ = [
    "MAP_KINDS",
    "AnomalyMap",
    "ExportTooSlowError",
    "InversionResult",
    "ModeCollapseError",
    "PriorDivergedError",
    "Rgi",
    "RgiModel",
    "best_of_pool",
    "closed_form_mask",
    "invert",
]
