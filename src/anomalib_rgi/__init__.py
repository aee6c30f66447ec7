"""anomalib-rgi: robust GAN inversion (RGI / R-RGI) as an anomalib model.

Importing this package registers ``Rgi`` and ``RgiTextures`` with anomalib (see
:mod:`anomalib_rgi.registration`); installed with pip, that happens automatically whenever a program
imports ``anomalib.models``.
"""

from .data import RgiTextures
from .metrics import Dice, EscapeRate, FalseAlarmRate, PerImageBestDice
from .models import Rgi
from .post_processing import FalseAlarmPostProcessor
from .registration import register

__all__ = [
    "Dice",
    "EscapeRate",
    "FalseAlarmPostProcessor",
    "FalseAlarmRate",
    "PerImageBestDice",
    "Rgi",
    "RgiTextures",
    "register",
]
__version__ = "0.1.0"

register()
