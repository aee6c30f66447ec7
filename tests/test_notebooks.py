"""The quickstart notebook runs top to bottom (at a tiny size), so it cannot rot."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("RGI_QUICKSTART_TINY", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    notebook = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
    # The kernel must be this interpreter (the one with anomalib-rgi installed), not a system one.
    from ipykernel.kernelspec import write_kernel_spec

    spec = write_kernel_spec(
        path=tmp_path / "kernel",
        overrides={"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]},
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    (tmp_path / "jupyter" / "kernels").mkdir(parents=True)
    Path(spec).rename(tmp_path / "jupyter" / "kernels" / "rgi-test")
    client = nbclient.NotebookClient(
        notebook, kernel_name="rgi-test", timeout=600, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    assert any("pixel_Dice" in str(output.get("data", {})) for output in outputs)
    assert (tmp_path / "results" / "quickstart" / "export").is_dir()
