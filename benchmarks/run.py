"""The benchmark suite's command line; the suite itself lives in :mod:`benchmarks.suite`.

  python -m benchmarks.run --tier cpu|gpu [--only METHOD ...] [--ipc 1 10 50] [--out DIR]
                           [--max-minutes M] [--config PATH] [--dry-run]
  python -m benchmarks.run --write-results        # only rebuild benchmarks/RESULTS.md

See :mod:`benchmarks.suite.runner` for what a run writes and how it resumes.
"""

from benchmarks import suite
from benchmarks.suite import *  # noqa: F401,F403 -- the names tests and benchmarks import

__all__ = list(suite.__all__)

if __name__ == "__main__":
  suite.main()
