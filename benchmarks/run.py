"""The benchmark suite's command line; the suite itself lives in :mod:`benchmarks.suite`.

  python -m benchmarks.run --tier cpu|gpu [--only METHOD ...] [--ipc 1 10 50] [--out DIR]
                           [--max-minutes M] [--config PATH] [--dry-run]
  python -m benchmarks.run --write-results        # only rebuild benchmarks/RESULTS.md

See :mod:`benchmarks.suite.runner` for what a run writes and how it resumes.
"""

from benchmarks.suite import BENCH_DIR
from benchmarks.suite import BudgetSpent
from benchmarks.suite import CELL_KIND
from benchmarks.suite import CONFIG_DIR
from benchmarks.suite import Cell
from benchmarks.suite import METHODS
from benchmarks.suite import RESULTS_MD
from benchmarks.suite import SUITE_KIND
from benchmarks.suite import all_cells
from benchmarks.suite import cell_paths
from benchmarks.suite import cell_settings
from benchmarks.suite import check_config
from benchmarks.suite import collect_sections
from benchmarks.suite import default_out
from benchmarks.suite import device_label
from benchmarks.suite import finished
from benchmarks.suite import fingerprint
from benchmarks.suite import load_config
from benchmarks.suite import load_dataset
from benchmarks.suite import main
from benchmarks.suite import merge
from benchmarks.suite import plan
from benchmarks.suite import render_table
from benchmarks.suite import run_cell
from benchmarks.suite import run_suite
from benchmarks.suite import validate
from benchmarks.suite import write_results_md
from benchmarks.suite import write_suite

__all__ = [
    "BENCH_DIR", "BudgetSpent", "CELL_KIND", "CONFIG_DIR", "Cell", "METHODS", "RESULTS_MD",
    "SUITE_KIND", "all_cells", "cell_paths", "cell_settings", "check_config",
    "collect_sections", "default_out", "device_label", "finished", "fingerprint",
    "load_config", "load_dataset", "main", "merge", "plan", "render_table", "run_cell",
    "run_suite", "validate", "write_results_md", "write_suite",
]

if __name__ == "__main__":
  main()
