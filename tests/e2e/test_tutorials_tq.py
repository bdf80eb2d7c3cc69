"""The tutorial notebooks on TransferQueue (SimpleStorage): their TransferQueue-only branches run.

Each notebook runs top to bottom in a fresh kernel of this interpreter (as in
tests/unit/test_tutorials.py) with ``KVPLANE_TUTORIAL_CONFIG=kvplane/examples/transfer_queue.yaml``, so
``kvplane.init(CONFIG)`` in its first cell starts a local Ray of its own in the kernel process (4 CPUs,
apart from the session's) and bootstraps a deployment there, and the notebook's last ``kvplane.close()``
stops both. A cell right after the first checks that the notebook really runs on TransferQueue. If a
cell fails, ``kvplane.close()`` still runs in the same kernel before it shuts down, so no deployment or
Ray is left behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

from tests.unit.test_tutorials import CONFIG_ENV, NOTEBOOKS, ROOT

TQ_CONFIG = "kvplane/examples/transfer_queue.yaml"  # relative to ROOT, as tutorial/README.md runs it
#: A cell's deadline: the first one starts Ray and bootstraps TransferQueue (bootstrap_timeout_s is 120).
CELL_TIMEOUT_S = 300
ON_TQ = (
    "import kvplane as _kvplane\n"
    "from kvplane.adapters.transfer_queue import TransferQueueDataPlaneClient as _TQ\n"
    "assert isinstance(_kvplane.get_client(), _TQ), type(_kvplane.get_client())"
)
CLEANUP = "import kvplane as _kvplane\n_kvplane.close()"


def _execute_on_tq(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Run ``nb`` with the TransferQueue config, the ON_TQ check after its first code cell, cleanup always."""
    first = next(i for i, cell in enumerate(nb.cells) if cell.cell_type == "code")
    nb.cells.insert(first + 1, new_code_cell(ON_TQ))
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}  # no foreign Ray
    env[CONFIG_ENV] = TQ_CONFIG
    client = NotebookClient(
        nb, kernel_name="python3", timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(ROOT)}}
    )
    client.reset_execution_trackers()
    with client.setup_kernel(env=env):
        try:
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
        finally:
            nb.cells.append(new_code_cell(CLEANUP))  # nbclient writes the executed cell back by index
            try:
                client.execute_cell(
                    nb.cells[-1], len(nb.cells) - 1, execution_count=client.code_cells_executed + 1
                )
            except Exception as exc:  # noqa: BLE001 - the notebook's own failure is the one to report
                print(f"kvplane.close() after the failure failed too: {exc!r}")
    return nb


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom_on_transfer_queue(path: Path):
    assert (ROOT / TQ_CONFIG).is_file()
    executed = _execute_on_tq(nbformat.read(path, as_version=4))  # raises CellExecutionError on any error
    code_cells = [cell for cell in executed.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code_cells] == list(range(1, len(code_cells) + 1))
    assert [o for cell in code_cells for o in cell.outputs if o.output_type == "error"] == []
