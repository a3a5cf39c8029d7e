"""Validation tuning of a transfer recipe: the learning rate from the network's NTK, a grid.

The KIP transfer notebook (google-research ``kip/nn_training.ipynb``) sets the learning rate
of the finite network from its empirical NTK at initialisation and grid-searches a factor on
it and the L2 coefficient on a validation split carved from the training set ("max_lr_factor
and l2_regularization is found through grid search"). :class:`Tune` describes that search:

.. math::
   \\eta(f) = f \\cdot \\eta_{\\text{NTK}},\\qquad
   \\eta_{\\text{NTK}} = \\frac{2 m K}{\\lambda_{\\max}(\\Theta_0) + 10^{-12}},

with :math:`\\Theta_0` the empirical NTK of a freshly initialised network on ``ntk_images``
validation images (:func:`kip._src.transfer.ntk.ntk_learning_rate`), and picks the
``(f, wd)`` of ``lr_factors x weight_decays`` with the highest mean validation accuracy over
``restarts`` networks. The test set is never looked at. The notebook does not publish its grid;
the default grid here is ours. ``lr_rule='recipe'`` scales the recipe's own learning rate
instead of the NTK's.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

__all__ = ["Tune", "LR_RULES", "as_tune", "validation_split", "grid", "choose", "grid_edges"]

LR_RULES = ("ntk", "recipe")


@dataclasses.dataclass(frozen=True)
class Tune:
  """How a transfer recipe is tuned on validation data.

  Attributes:
    validation_size: images taken from the *end* of ``dataset.x_train`` (the notebook's
      ``train_xs[-VALID_SIZE:]``, 5,000) to measure validation accuracy on.
    lr_factors: the factors :math:`f` tried.
    weight_decays: the L2 (coupled weight decay) coefficients tried.
    lr_rule: ``'ntk'`` (:math:`\\eta = f \\eta_{\\text{NTK}}`) or ``'recipe'``
      (:math:`\\eta = f \\cdot` the recipe's ``learning_rate``).
    ntk_images: validation images the NTK's largest eigenvalue is measured on (notebook:
      ``empirical_ntk_num_inputs = 50``).
    restarts: networks trained per grid point.
    search_epochs: epochs of each search run (``None``: the recipe's own length); the
      chosen values are then trained for the recipe's full length.
  """
  validation_size: int = 5000
  lr_factors: tuple[float, ...] = (0.25, 0.5, 1.0)
  weight_decays: tuple[float, ...] = (0.0, 1e-3)
  lr_rule: str = "ntk"
  ntk_images: int = 50
  restarts: int = 1
  search_epochs: int | None = None

  def __post_init__(self):
    for name in ("lr_factors", "weight_decays"):
      values = tuple(float(v) for v in getattr(self, name))
      if not values:
        raise ValueError(f"Tune.{name} is empty; give at least one value.")
      object.__setattr__(self, name, values)
    if any(not (math.isfinite(f) and f > 0) for f in self.lr_factors):
      raise ValueError(f"Tune.lr_factors must be positive; got {self.lr_factors}.")
    if any(not (math.isfinite(w) and w >= 0) for w in self.weight_decays):
      raise ValueError(f"Tune.weight_decays must be >= 0; got {self.weight_decays}.")
    if self.lr_rule not in LR_RULES:
      raise ValueError(f"Tune.lr_rule={self.lr_rule!r}; use one of {LR_RULES}.")
    names = ("validation_size", "ntk_images", "restarts") + (
        ("search_epochs",) if self.search_epochs is not None else ())
    for name in names:
      v = getattr(self, name)
      if isinstance(v, bool) or int(v) != v or v < 1:
        raise ValueError(f"Tune.{name} must be a positive integer; got {v!r}.")


def as_tune(tune: Any) -> Tune | None:
  """``None`` / ``False``: no tuning; ``True``: :class:`Tune()`; a mapping: its fields."""
  if tune is None or tune is False:
    return None
  if tune is True:
    return Tune()
  if isinstance(tune, Tune):
    return tune
  if isinstance(tune, dict):
    return Tune(**tune)
  raise ValueError(f"tune must be None, True, a kip.transfer.Tune or a dict of its fields; "
                   f"got {tune!r}.")


def validation_split(dataset: Any, tune: Tune) -> tuple[np.ndarray, np.ndarray]:
  """The last ``tune.validation_size`` training images and labels.

  Raises:
    ValueError: the split would be empty or take the whole training set.
  """
  n = int(np.shape(dataset.x_train)[0])
  v = int(tune.validation_size)
  if n < 2 or v >= n:
    raise ValueError(f"tuning needs a validation split carved from the training set, but "
                     f"validation_size={v} leaves nothing of the {n} training images; pass a "
                     f"smaller Tune(validation_size=...) or tune=None to disable tuning.")
  return np.asarray(dataset.x_train[n - v:]), np.asarray(dataset.y_train[n - v:])


def grid(tune: Tune, base_lr: float) -> list[dict[str, float]]:
  """The grid points: ``lr_factor``, ``weight_decay`` and the ``learning_rate`` they give."""
  return [{"lr_factor": f, "weight_decay": w, "learning_rate": f * float(base_lr)}
          for f in tune.lr_factors for w in tune.weight_decays]


def choose(points: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """The point of highest ``val_accuracy`` (first on ties; diverged points are ``nan``).

  Raises:
    ValueError: every point diverged.
  """
  accs = np.asarray([p["val_accuracy"] for p in points], np.float64)
  if not np.isfinite(accs).any():
    raise ValueError("every tuning point diverged; lower Tune.lr_factors or check the set.")
  return dict(points[int(np.nanargmax(accs))])


def grid_edges(points: Sequence[dict[str, Any]], chosen: dict[str, Any]) -> list[str]:
  """Where ``chosen`` sits on the edge of the grid of ``points``: the best value may lie outside.

  An ``lr_factor`` at the smallest or largest of several factors is flagged, and a
  ``weight_decay`` at the largest of several (or at the smallest when that is not 0, the
  natural lower bound).

  Returns:
    One sentence per flagged value, e.g. ``'lr_factor 0.5 is the largest of 0.0625 / 0.125 /
    0.25 / 0.5'``; empty when the choice is inside the grid.
  """
  out = []
  for name in ("lr_factor", "weight_decay"):
    values = sorted({float(p[name]) for p in points})
    v = float(chosen[name])
    if len(values) < 2:
      continue
    grid_text = " / ".join(f"{x:g}" for x in values)
    if v == values[-1]:
      out.append(f"{name} {v:g} is the largest of {grid_text}")
    elif v == values[0] and not (name == "weight_decay" and v == 0.0):
      out.append(f"{name} {v:g} is the smallest of {grid_text}")
  return out
