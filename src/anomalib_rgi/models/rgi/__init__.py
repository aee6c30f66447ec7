"""RGI / R-RGI: robust GAN inversion for pixel-wise anomaly detection and mask-free inpainting."""

from .inversion import InversionResult, best_of_pool, closed_form_mask, invert
from .lightning_model import ModeCollapseError, PriorDivergedError, Rgi
from .torch_model import RgiModel

__all__ = [
    "InversionResult",
    "ModeCollapseError",
    "PriorDivergedError",
    "Rgi",
    "RgiModel",
    "best_of_pool",
    "closed_form_mask",
    "invert",
]
