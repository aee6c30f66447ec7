"""Tiny start-up hook (run from ``anomalib_rgi.pth``): register Rgi when ``anomalib.models`` loads.

It imports nothing heavy: it only puts a finder on ``sys.meta_path`` that waits for the first import
of ``anomalib.models`` and, once that module has finished loading, calls ``anomalib_rgi.register()``;
and for ``anomalib.cli.cli`` (the ``anomalib`` command), once it has loaded, makes the command honour
its ``seed_everything`` setting (``anomalib_rgi.registration.patch_cli_seed``).
Programs that never import anomalib pay for this file alone. ``ANOMALIB_RGI_AUTOREGISTER=0`` turns it off.
"""

import os
import sys

WATCHED = "anomalib.models"
CLI = "anomalib.cli.cli"


def _register(module):  # noqa: ANN001, ANN202, ARG001
    import anomalib_rgi  # noqa: F401, PLC0415  (registers on import)


def _patch_cli(module):  # noqa: ANN001, ANN202
    from anomalib_rgi.registration import patch_cli_seed  # noqa: PLC0415

    patch_cli_seed(module)


_PENDING = {WATCHED: _register, CLI: _patch_cli}


class _RegisterAfterImport:
    """Meta-path finder that wraps the loaders of ``anomalib.models`` and ``anomalib.cli.cli`` once each."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):  # noqa: ANN001, ANN206, ARG003
        if name not in _PENDING:
            return None
        after = _PENDING.pop(name)
        if not _PENDING:
            sys.meta_path.remove(cls)
        from importlib.machinery import PathFinder  # noqa: PLC0415

        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_patch(module):  # noqa: ANN001, ANN202
            exec_module(module)
            after(module)

        spec.loader.exec_module = exec_then_patch
        return spec


def install() -> None:
    """Put the finder in place unless disabled or anomalib is already loaded."""
    if os.environ.get("ANOMALIB_RGI_AUTOREGISTER", "1") == "0" or _RegisterAfterImport in sys.meta_path:
        return
    if WATCHED in sys.modules:
        return
    sys.meta_path.insert(0, _RegisterAfterImport)


install()
