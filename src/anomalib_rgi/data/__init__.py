"""Built-in data: texture photographs from scikit-image with synthetic defects."""

from .datamodule import RgiTextures
from .textures import CATEGORIES, DEFECT_TYPES, build_category

__all__ = ["CATEGORIES", "DEFECT_TYPES", "RgiTextures", "build_category"]
