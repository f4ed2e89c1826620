"""``examples/quickstart.ipynb`` runs top to bottom, as a user runs it, on this interpreter.

The notebook names the ``python3`` kernel; ipykernel, installed by ``pip install -e
".[dev]"``, ships that kernelspec in ``<venv>/share/jupyter/kernels/python3``. The test
uses exactly that one (not a user-wide kernel of another Python that could shadow it), so a
fresh clone runs it after ``make install`` with nothing registered by hand.

The notebook's two sample rasters are swapped for their crops (``cropped_sources``, the same
file names, so the same scene names): every cell runs as written, on a third of the pixels.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import nbformat
import pytest

from resflow.samples import sample_path
from tests.fixtures_engines import REPO_ROOT

NOTEBOOK = REPO_ROOT / "examples" / "quickstart.ipynb"
SOURCES = '[sample_path("atlanta-pan"), sample_path("rotterdam-ms1")]'
"""The notebook's inputs, as its first cell names them."""


def on_crops(notebook: nbformat.NotebookNode, cropped_sources: Path) -> None:
    """Point the notebook's ingest at the crops of the same two samples."""
    (cell,) = [c for c in notebook.cells if SOURCES in c.source]
    crops = [str(cropped_sources / sample_path(n).name) for n in ("atlanta-pan", "rotterdam-ms1")]
    cell.source = cell.source.replace(SOURCES, repr(crops))


def outputs_text(notebook: nbformat.NotebookNode) -> str:
    """Every printed line and plain-text result of the executed notebook, in order."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text") or output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.slow
def test_quickstart_notebook_runs_on_the_bundled_samples(tmp_path: Path,
                                                         cropped_sources: Path) -> None:
    pytest.importorskip("distributed", reason="the quickstart runs on Dask (`resflow[dask]`)")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    on_crops(notebook, cropped_sources)
    kernel = notebook.metadata.kernelspec.name
    specs = KernelSpecManager(kernel_dirs=[str(Path(sys.prefix, "share", "jupyter", "kernels"))],
                              ensure_native_kernel=False)
    manager = KernelManager(kernel_name=kernel, kernel_spec_manager=specs)
    assert manager.format_kernel_cmd()[0] == sys.executable  # the kernel is this interpreter
    client = NotebookClient(notebook, km=manager, timeout=180,
                            resources={"metadata": {"path": str(tmp_path)}})
    # the notebook's temporary folder (and the cluster's scratch space) under tmp_path; the
    # kernel is shut down afterwards, though the test made its manager
    client.execute(cleanup_kc=True, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert not manager.has_kernel

    text = outputs_text(notebook)
    assert re.search(r"^http://127\.0\.0\.1:\d+/status$", text, re.MULTILINE), text
    assert re.search(r"^resflow: \d+ chips, .* on dask \(2 workers x 1 thread\) -> ", text,
                     re.MULTILINE), text
    assert "input error" not in text
    buildings = re.search(r"^(\d+) buildings; \{'ms1': \d+, 'sample_geotiff': \d+\}$", text,
                          re.MULTILINE)
    assert buildings and int(buildings[1]) > 0, text
    figures = [output for cell in notebook.cells for output in cell.get("outputs", [])
               if "image/png" in output.get("data", {})]
    assert len(figures) == 2
    assert not list(tmp_path.glob("resflow-quickstart-*"))  # its last cell cleans up
