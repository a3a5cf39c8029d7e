"""The suite's wall-clock budget (``--max-minutes``) as seconds left for the driver.

A budget is an absolute deadline (``time.time()`` seconds). What is left of it is handed to
``kip.methods.run(time_budget=...)``, which stops cleanly with a checkpoint; an invocation
always makes progress, so the budget handed over is never below :data:`MIN_SECONDS` (the
driver then runs one step and stops).
"""

from __future__ import annotations

import time
from typing import Optional

__all__ = ["BudgetSpent", "MIN_SECONDS", "seconds_left", "spent"]

MIN_SECONDS = 1e-3


class BudgetSpent(Exception):
  """The ``--max-minutes`` budget ran out inside a cell; what it did so far is saved."""


def seconds_left(deadline: Optional[float]) -> Optional[float]:
  """Seconds until ``deadline`` (at least :data:`MIN_SECONDS`); ``None`` without a deadline."""
  if deadline is None:
    return None
  return max(deadline - time.time(), MIN_SECONDS)


def spent(deadline: Optional[float]) -> bool:
  """Whether ``deadline`` has passed (never, without one)."""
  return deadline is not None and time.time() > deadline
