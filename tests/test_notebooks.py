"""The research notebooks run top to bottom at their default (small) size, and are committed clean.

Each notebook is executed with nbclient in a kernel started from *this* interpreter (the venv),
so ``import kip`` resolves to the code under test; a cell that raises fails the test.
"""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = ["01_kernels.ipynb", "02_kip_walkthrough.ipynb", "03_labels.ipynb",
             "04_transfer_cross_arch.ipynb", "05_dd_study.ipynb"]
CELL_TIMEOUT = 600


def _client(nb, cwd):
  from jupyter_client.manager import KernelManager
  # The 'python3' kernelspec starts `python -m ipykernel_launcher`; jupyter_client replaces a
  # bare 'python' with sys.executable, but a user-level spec could point elsewhere, so the
  # command is pinned to this interpreter explicitly.
  km = KernelManager(kernel_name="python3")
  km.kernel_spec.argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
  env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the kernel's inline backend
  env.update(JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
             PYDEVD_DISABLE_FILE_VALIDATION="1")
  return nbclient.NotebookClient(nb, km=km, timeout=CELL_TIMEOUT, allow_errors=False,
                                 resources={"metadata": {"path": str(cwd)}}), env


def _execute(nb, cwd):
  client, env = _client(nb, cwd)
  try:
    client.execute(env=env)
  finally:  # nbclient leaves a kernel manager it was handed running
    if client.km is not None and client.km.has_kernel:
      client.km.shutdown_kernel(now=True)
  return nb


def test_kernel_uses_this_interpreter(tmp_path):
  nb = nbformat.v4.new_notebook()
  nb.cells = [nbformat.v4.new_code_cell(
      "import sys, kip; print(sys.executable); print(kip.__file__)")]
  outputs = _execute(nb, tmp_path).cells[0].outputs
  # Only stdout: stderr (tqdm.auto's "IProgress not found" warning when ipywidgets is absent)
  # may arrive before or after the prints.
  out = "".join(o["text"] for o in outputs
                if o["output_type"] == "stream" and o["name"] == "stdout").split()
  assert os.path.realpath(out[0]) == os.path.realpath(sys.executable)
  import kip
  assert os.path.realpath(out[1]) == os.path.realpath(kip.__file__)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_clean(name):
  nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(not c.outputs and c.execution_count is None for c in code), \
      f"{name} has outputs; strip them before committing"
  assert "parameters" in code[0].metadata.get("tags", []), "first code cell: the parameters"
  assert "FAST = True" in code[0].source


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path):
  nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
  try:
    _execute(nb, tmp_path)
  except nbclient.exceptions.CellExecutionError as e:  # names the cell and the traceback
    pytest.fail(f"{name}: a cell failed\n{e}")
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  # Every notebook draws its figures (matplotlib's inline backend).
  assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2, f"{name} drew no figures"
