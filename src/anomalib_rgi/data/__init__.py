"""Built-in data: texture photographs (and, in version 2, a colour fabric) with synthetic defects."""

from .datamodule import RgiTextures
from .textures import CATEGORIES, DEFECT_TYPES, build_category, categories, defect_types

__all__ = ["CATEGORIES", "DEFECT_TYPES", "RgiTextures", "build_category", "categories", "defect_types"]
