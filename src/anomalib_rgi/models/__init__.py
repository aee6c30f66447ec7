"""Models of anomalib-rgi."""

from .rgi import Rgi

__all__ = ["Rgi"]
