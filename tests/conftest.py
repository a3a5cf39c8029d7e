"""Fixtures shared by the test modules (built once per session and worker)."""

import pytest

import kip


@pytest.fixture(scope="session")
def digits():
  """scikit-learn's real 8x8 digits, standardised (1,437 train / 360 test images)."""
  return kip.data.load("digits")


@pytest.fixture(scope="session")
def digits_small():
  """A class-balanced 200 / 100 subset of digits, for tests that compile many steps."""
  return kip.data.load("digits", n_train=200, n_test=100)


# The longest tests (each a notebook kernel or a whole benchmark, 40-80 s on 2 cores) are
# scheduled first, so that pytest-xdist's workers finish together instead of one of them
# running a notebook alone at the end.
_FIRST = (  # longest first (seconds measured on 2 cores)
    "tests/test_notebooks.py::test_notebook_runs[04",   # 82
    "tests/test_gpu_check.py::",                        # 59
    "tests/test_notebooks.py::test_notebook_runs[05",   # 48
    "tests/test_notebooks.py::test_notebook_runs[01",   # 44
    "tests/test_notebooks.py::test_notebook_runs[03",   # 36
    "tests/test_notebooks.py::test_notebook_runs[02",   # 24
)


def _rank(item) -> int:
  return next((i for i, prefix in enumerate(_FIRST) if item.nodeid.startswith(prefix)),
              len(_FIRST))


def pytest_collection_modifyitems(session, config, items):
  del session, config
  items.sort(key=_rank)  # stable: every other test keeps its order
