"""Tiny start-up hook (run from ``anomalib_rgi.pth``): register Rgi when ``anomalib.models`` loads.

It imports nothing heavy: it only puts a finder on ``sys.meta_path`` that waits for the first import
of ``anomalib.models`` and, once that module has finished loading, calls ``anomalib_rgi.register()``.
Programs that never import anomalib pay for this file alone. ``ANOMALIB_RGI_AUTOREGISTER=0`` turns it off.
"""

import os
import sys

WATCHED = "anomalib.models"


class _RegisterAfterImport:
    """Meta-path finder that wraps the loader of ``anomalib.models`` once."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):  # noqa: ANN001, ANN206, ARG003
        if name != WATCHED:
            return None
        sys.meta_path.remove(cls)
        from importlib.machinery import PathFinder  # noqa: PLC0415

        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):  # noqa: ANN001, ANN202
            exec_module(module)
            import anomalib_rgi  # noqa: F401, PLC0415  (registers on import)

        spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    """Put the finder in place unless disabled or anomalib is already loaded."""
    if os.environ.get("ANOMALIB_RGI_AUTOREGISTER", "1") == "0" or _RegisterAfterImport in sys.meta_path:
        return
    if WATCHED in sys.modules:
        return
    sys.meta_path.insert(0, _RegisterAfterImport)


install()
