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
