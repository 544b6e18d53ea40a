"""docs/quickstart.ipynb executes top to bottom in a real Jupyter kernel (nbclient + ipykernel), so it
cannot rot; its outputs are not committed (the file holds no outputs and no execution counts)."""

from __future__ import annotations

import os

import pytest

NOTEBOOK = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "quickstart.ipynb")


def test_notebook_committed_without_outputs():
    nbformat = pytest.importorskip("nbformat", reason="nbformat (the test extra) is not installed")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_quickstart_runs_top_to_bottom(tmp_path):
    nbformat = pytest.importorskip("nbformat", reason="nbformat (the test extra) is not installed")
    nbclient = pytest.importorskip("nbclient", reason="nbclient (the test extra) is not installed")
    pytest.importorskip("ipykernel", reason="ipykernel (the test extra) is not installed")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                            ).execute()
    htmls = [o["data"]["text/html"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
             if o.get("output_type") == "execute_result" and "text/html" in o.get("data", {})]
    assert len(htmls) >= 8  # model table, activations, patterns, cams, weights, atlas, evaluation, lite0 cams
    assert sum("<img" in h for h in htmls) >= 7
