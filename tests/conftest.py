"""Fixtures shared by the test modules (built once per session and worker)."""

import os

# The suite compiles several hundred small XLA programs and runs most of them a few times, so
# compilation is most of its time. LLVM optimisation level 0 (XLA's HLO passes still run)
# compiles them faster (on 2 cores: tests/test_methods.py 41 s -> 34 s, the parity tests
# 113 s -> 93 s), though compute-heavy tests (Monte-Carlo checks, notebook 04) run slower.
# Programs compute the same functions; tolerances are unchanged. Set XLA_FLAGS yourself to run
# at XLA's defaults. This must happen before jax creates its backend, so before kip is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import pytest  # noqa: E402

import kip  # noqa: E402


@pytest.fixture(scope="session")
def digits():
  """scikit-learn's real 8x8 digits, standardised (1,437 train / 360 test images)."""
  return kip.data.load("digits")


@pytest.fixture(scope="session")
def digits_small():
  """A class-balanced 200 / 100 subset of digits, for tests that compile many steps."""
  return kip.data.load("digits", n_train=200, n_test=100)


# The longest tests (each a notebook kernel, a whole benchmark or a Monte-Carlo check, 15-80 s
# on 2 cores) are scheduled first, so that pytest-xdist's workers finish together instead of
# one of them running a notebook alone at the end.
_FIRST = (  # longest first (seconds measured on 2 cores, XLA_FLAGS as above)
    "tests/test_notebooks.py::test_notebook_runs[04",   # 82
    "tests/test_notebooks.py::test_notebook_runs[05",   # 38
    "tests/test_notebooks.py::test_notebook_runs[01",   # 27
    "tests/test_kernels.py::test_ntk_matches_wide_networks[conv]",  # 19
    "tests/test_notebooks.py::test_notebook_runs[03",   # 19
    "tests/test_gpu_check.py::",                        # 19
    "tests/test_random_features.py::test_mean_converges_to_exact_nngp_at_rate[fc3]",  # 17
    "tests/test_notebooks.py::test_notebook_runs[02",   # 15
)


def _rank(item) -> int:
  return next((i for i, prefix in enumerate(_FIRST) if item.nodeid.startswith(prefix)),
              len(_FIRST))


def pytest_collection_modifyitems(session, config, items):
  del session, config
  items.sort(key=_rank)  # stable: every other test keeps its order
