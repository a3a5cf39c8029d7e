"""The benchmark suite (``python -m benchmarks.run``), one module per concern.

* :mod:`~benchmarks.suite.config`: tier configs, read and checked;
* :mod:`~benchmarks.suite.plan`: cells, their settings, validation and fingerprints;
* :mod:`~benchmarks.suite.methods`: ``distill`` options -> ``kip.methods`` registry + driver;
* :mod:`~benchmarks.suite.budget`: the ``--max-minutes`` budget as the driver's time budget;
* :mod:`~benchmarks.suite.evaluation`: KRR and finite networks;
* :mod:`~benchmarks.suite.cells`: one cell, distilled, evaluated and written;
* :mod:`~benchmarks.suite.tables`: the Markdown table and caption;
* :mod:`~benchmarks.suite.results_md`: ``benchmarks/RESULTS.md``;
* :mod:`~benchmarks.suite.runner`: the suite and its command line.
"""

from benchmarks.suite.budget import BudgetSpent
from benchmarks.suite.cells import cell_paths
from benchmarks.suite.cells import device_label
from benchmarks.suite.cells import finished
from benchmarks.suite.cells import load_dataset
from benchmarks.suite.cells import run_cell
from benchmarks.suite.config import BENCH_DIR
from benchmarks.suite.config import CONFIG_DIR
from benchmarks.suite.config import METHODS
from benchmarks.suite.config import check_config
from benchmarks.suite.config import load_config
from benchmarks.suite.config import merge
from benchmarks.suite.files import CELL_KIND
from benchmarks.suite.files import SUITE_KIND
from benchmarks.suite.plan import Cell
from benchmarks.suite.plan import all_cells
from benchmarks.suite.plan import cell_settings
from benchmarks.suite.plan import fingerprint
from benchmarks.suite.plan import plan
from benchmarks.suite.plan import validate
from benchmarks.suite.results_md import RESULTS_MD
from benchmarks.suite.results_md import collect_sections
from benchmarks.suite.results_md import update_readme
from benchmarks.suite.results_md import write_results_md
from benchmarks.suite.runner import default_out
from benchmarks.suite.runner import main
from benchmarks.suite.runner import run_suite
from benchmarks.suite.runner import write_suite
from benchmarks.suite.tables import render_table

__all__ = [
    "BENCH_DIR", "BudgetSpent", "CELL_KIND", "CONFIG_DIR", "Cell", "METHODS", "RESULTS_MD",
    "SUITE_KIND", "all_cells", "cell_paths", "cell_settings", "check_config",
    "collect_sections", "default_out", "device_label", "finished", "fingerprint",
    "load_config", "load_dataset", "main", "merge", "plan", "render_table", "run_cell",
    "run_suite", "update_readme", "validate", "write_results_md", "write_suite",
]
