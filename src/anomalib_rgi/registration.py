"""Make ``Rgi`` visible where the stock ``anomalib`` command and API look for models.

anomalib 2.7 has no plugin mechanism, and it finds models in three different ways:

- ``get_model("rgi")`` (Python API, ``anomalib benchmark``) matches names case-insensitively against
  the DIRECT subclasses of ``AnomalibModule``: importing ``Rgi`` is enough;
- ``get_model({"class_path": "Rgi"})`` and ``get_datamodule`` look the name up as an attribute of
  ``anomalib.models`` / ``anomalib.data``: :func:`register` sets those attributes;
- the CLI (jsonargparse) matches ``--model NAME`` case-SENSITIVELY against imported subclasses, so
  ``--model padim`` fails even for stock models. :func:`register` teaches the resolver anomalib's own
  convention (snake or Pascal case, any letter case) for anomalib models and datamodules only, which
  fixes it for every model, ours and stock.

:func:`register` also installs :mod:`anomalib_rgi.data.image_io` in anomalib's image datasets: 16-bit
images are read at full range instead of clipped to white, unreadable files and masks of the wrong
size raise errors that name the file. For 8-bit images nothing changes. And it makes anomalib
datamodules score every validation/test image exactly once under DDP (:mod:`anomalib_rgi.data.distributed`).

Host fix: anomalib 2.7's command declares ``seed_everything`` (in the configs and ``--seed_everything``)
but never applies it, so every ``anomalib train`` ran on an unseeded random state: two runs of one
config gave different priors. :func:`patch_cli_seed` seeds as Lightning's own CLI does (an int: that
seed; ``True``, the default: a random seed, written back into the config; ``False``: none), before
the model and data are built.

The installed ``anomalib_rgi.pth`` calls :func:`register` right after a program first imports
``anomalib.models`` (see ``_anomalib_rgi_autoload``); set ``ANOMALIB_RGI_AUTOREGISTER=0`` to turn that
off and call ``anomalib_rgi.register()`` (or ``import anomalib_rgi``) yourself.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module
from typing import Any

_PATCH_MARK = "_anomalib_rgi_patched"


def _anomalib_base_classes() -> tuple[type, ...]:
    from anomalib.data import AnomalibDataModule  # noqa: PLC0415
    from anomalib.models import AnomalibModule  # noqa: PLC0415

    return (AnomalibModule, AnomalibDataModule)


def _normalise(name: str) -> str:
    return name.replace("_", "").lower()


def _case_insensitive(resolve: Callable[[Any, str], str]) -> Callable[[Any, str], str]:
    from jsonargparse._typehints import get_all_subclass_paths  # noqa: PLC0415

    def resolve_class_path_by_name(cls: Any, name: str) -> str:  # noqa: ANN401
        class_path = resolve(cls, name)
        if "." in class_path or not (isinstance(cls, type) and issubclass(cls, _anomalib_base_classes())):
            return class_path
        matches = [
            path for path in get_all_subclass_paths(cls) if _normalise(path.rsplit(".", 1)[1]) == _normalise(name)
        ]
        return matches[0] if len(matches) == 1 else class_path

    setattr(resolve_class_path_by_name, _PATCH_MARK, True)
    return resolve_class_path_by_name


def _patch_cli_name_resolution() -> None:
    from jsonargparse import _from_config, _typehints  # noqa: PLC0415

    for module in (_typehints, _from_config):
        current = getattr(module, "resolve_class_path_by_name", None)
        if current is not None and not getattr(current, _PATCH_MARK, False):
            module.resolve_class_path_by_name = _case_insensitive(current)


def patch_cli_seed(cli_module: Any) -> None:  # noqa: ANN401
    """Make ``anomalib.cli.cli.AnomalibCLI`` apply its ``seed_everything`` setting. Idempotent."""
    cli = cli_module.AnomalibCLI
    before = cli.before_instantiate_classes
    if getattr(before, _PATCH_MARK, False):
        return

    def before_instantiate_classes(self: Any) -> None:  # noqa: ANN401
        before(self)
        from lightning.pytorch import seed_everything  # noqa: PLC0415

        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand, self.config) if subcommand else self.config
        seed = config.get("seed_everything", False)
        if seed is False or seed is None:  # subcommands without the setting (install, pipelines) are left alone
            return
        config["seed_everything"] = seed_everything(None if seed is True else int(seed), workers=True)

    setattr(before_instantiate_classes, _PATCH_MARK, True)
    cli.before_instantiate_classes = before_instantiate_classes


def register() -> None:
    """Expose ``Rgi`` and ``RgiTextures`` to anomalib's model/data look-ups and CLI. Idempotent."""
    from anomalib_rgi.data import RgiTextures, distributed, image_io  # noqa: PLC0415
    from anomalib_rgi.models import Rgi  # noqa: PLC0415

    # import_module, not attribute access: this may run while ``anomalib.models`` is still being bound
    # to its parent package (the start-up hook calls it right after that module's code has run).
    import_module("anomalib.models").Rgi = Rgi
    import_module("anomalib.data").RgiTextures = RgiTextures
    _patch_cli_name_resolution()
    cli = sys.modules.get("anomalib.cli.cli")
    if cli is not None and hasattr(cli, "AnomalibCLI"):
        patch_cli_seed(cli)
    image_io.install()
    distributed.install()
