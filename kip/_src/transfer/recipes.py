"""Training recipes for transferring a distilled set to a finite network.

A :class:`Recipe` is a frozen description of how a network is trained on a (small) support
set: loss, SGD-with-momentum hyperparameters, batch size, length and schedule. Presets follow
the protocols the published numbers were measured with (see ``ANCHORS.md``):

* ``'kip'``: the optimisation of the KIP transfer notebook (google-research
  ``kip/nn_training.ipynb``: MSE, SGD momentum 0.9, batch 100, 5,000 steps, cosine decay, L2
  1e-3) with one deviation: a *fixed* learning rate 0.01. The notebook sets the learning rate
  from the network's empirical NTK (``max_lr_factor x nt.predict.max_learning_rate`` on 50
  images, the factor and L2 grid-searched on validation data); ``evaluate(..., tune=Tune())``
  does that.
* ``'dc'`` (Zhao et al., 2021 evaluation protocol): cross-entropy, SGD momentum 0.9,
  learning rate 0.01 dropped 10x at half the run, weight decay 5e-4, batch 256, 300 epochs.
* ``'dsa'``: ``'dc'`` with ``augment=True`` and 1,000 epochs (Zhao & Bilen, 2021); the
  augmentation itself is a callable passed to ``train``; ``evaluate`` defaults to the
  reference's (``augment_fn='reference'``: DSA for this recipe; for ``'dc'`` on MNIST, DC's
  ``crop_scale_rotate`` with 1,000 epochs, as the DatasetCondensation ``get_daparam``).

Conventions shared by every recipe:

* Weight decay is coupled L2, PyTorch ``SGD(weight_decay=...)`` semantics: ``wd * theta`` is
  added to the gradient before the momentum trace, i.e. the loss gains
  :math:`\\tfrac{wd}{2}\\lVert\\theta\\rVert^2`. It applies to every parameter (biases and norm
  scales included), as in the PyTorch reference code.
* Targets (``label_targets='reference'``, the default), as the KIP transfer notebook
  (google-research/kip ``nn_training.ipynb``) builds them: ``loss='mse'``,
  :math:`\\tfrac12\\,\\mathrm{mean}_{i,k}(f_k(x_i) - t_{ik})^2`, regresses on *centred* labels:
  plain 0/1 one-hot rows become :math:`t = e_y - 1/K` (the notebook's ``shift``; 0.5 for
  ``K = 1``), and any other rows (learned or label-solved labels, already centred one-hot) are
  used as given. ``loss='xent'``,
  :math:`-\\mathrm{mean}_i \\sum_k t_{ik} \\log\\mathrm{softmax}(f(x_i))_k`, trains on
  :math:`t = \\mathrm{one\\_hot}(\\arg\\max_k y_{ik})` ("Recover one-hot label even for the
  learned labels").
* ``label_targets='as_given'`` (this library's earlier rule): ``'mse'`` on the labels exactly
  as given; ``'xent'`` on the labels if every row is a probability vector (entries >= 0, row
  sums 1 within 1e-3), else on ``softmax(labels)`` for all rows.
* Length: ``steps`` if set, else ``epochs * ceil(n / batch_size)``; a set smaller than the
  batch is one batch per step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

__all__ = ["Recipe", "get_recipe", "apply_overrides", "RECIPE_NAMES", "LABEL_TARGETS"]

_LOSSES = ("mse", "xent")
LABEL_TARGETS = ("reference", "as_given")
_SCHEDULES = ("cosine", "step_half")


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How a network is trained on a support set.

  Attributes:
    name: preset name it derives from (for reports).
    loss: ``'mse'`` (regression) or ``'xent'`` (softmax cross-entropy); the targets each
      trains on are set by ``label_targets`` (module docstring).
    learning_rate: peak learning rate of SGD with momentum.
    momentum: heavy-ball momentum (PyTorch / optax ``sgd`` convention, no dampening).
    weight_decay: coupled L2 coefficient (gradient gains ``weight_decay * theta``).
    batch_size: examples per step; sets smaller than this use the whole set every step.
    steps: number of SGD steps; takes precedence over ``epochs``.
    epochs: passes over the support set, used when ``steps`` is ``None``.
    schedule: ``'cosine'`` (cosine decay from ``learning_rate`` to 0 over the run) or
      ``'step_half'`` (``learning_rate``, then ``learning_rate / 10`` from half the run on,
      as DC's ``lr *= 0.1`` at ``epoch == Epoch // 2``).
    augment: the protocol trains on augmented batches; ``train`` then requires an
      ``augment_fn``.
    label_targets: ``'reference'`` (centred one-hot for MSE, argmax one-hot for
      cross-entropy) or ``'as_given'`` (see the module docstring).
  """
  name: str
  loss: str
  learning_rate: float
  batch_size: int
  momentum: float = 0.9
  weight_decay: float = 0.0
  steps: int | None = None
  epochs: int | None = None
  schedule: str = "cosine"
  augment: bool = False
  label_targets: str = "reference"

  def __post_init__(self):
    if self.loss not in _LOSSES:
      raise ValueError(f"loss={self.loss!r} is not supported; use one of {list(_LOSSES)}.")
    if self.label_targets not in LABEL_TARGETS:
      raise ValueError(f"label_targets={self.label_targets!r} is not supported; use one of "
                       f"{list(LABEL_TARGETS)}.")
    if self.schedule not in _SCHEDULES:
      raise ValueError(f"schedule={self.schedule!r} is not supported; use one of "
                       f"{list(_SCHEDULES)}.")
    if self.steps is None and self.epochs is None:
      raise ValueError("a recipe needs steps or epochs; both are None.")
    for field in ("steps", "epochs"):
      value = getattr(self, field)
      if value is not None and (int(value) != value or value < 1):
        raise ValueError(f"{field} must be a positive integer or None; got {value!r}.")
    if int(self.batch_size) != self.batch_size or self.batch_size < 1:
      raise ValueError(f"batch_size must be a positive integer; got {self.batch_size!r}.")
    if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
      raise ValueError(f"learning_rate must be positive and finite; got {self.learning_rate!r}.")
    if not 0 <= self.momentum < 1:
      raise ValueError(f"momentum must be in [0, 1); got {self.momentum!r}.")
    if not self.weight_decay >= 0:
      raise ValueError(f"weight_decay must be >= 0; got {self.weight_decay!r}.")

  def batch_size_for(self, n: int) -> int:
    """Examples per step on a set of ``n``: ``min(batch_size, n)``."""
    return min(int(self.batch_size), int(n))

  def num_steps(self, n: int) -> int:
    """SGD steps on a set of ``n`` examples: ``steps`` or ``epochs * ceil(n / batch)``."""
    if self.steps is not None:
      return int(self.steps)
    return int(self.epochs) * math.ceil(n / self.batch_size_for(n))

  def replace(self, **changes) -> "Recipe":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


_PRESETS: dict[str, Recipe] = {
    "kip": Recipe(name="kip", loss="mse", learning_rate=0.01, momentum=0.9, weight_decay=1e-3,
                  batch_size=100, steps=5000, schedule="cosine"),
    "dc": Recipe(name="dc", loss="xent", learning_rate=0.01, momentum=0.9, weight_decay=5e-4,
                 batch_size=256, epochs=300, schedule="step_half"),
    "dsa": Recipe(name="dsa", loss="xent", learning_rate=0.01, momentum=0.9, weight_decay=5e-4,
                  batch_size=256, epochs=1000, schedule="step_half", augment=True),
}
RECIPE_NAMES: tuple[str, ...] = tuple(_PRESETS)


def get_recipe(name: str, **overrides) -> Recipe:
  """A preset recipe with fields replaced.

  Setting only one of ``steps`` / ``epochs`` clears the other, so
  ``get_recipe('kip', epochs=100)`` trains for 100 epochs rather than the preset 5,000 steps.
  ``get_recipe('dc', augment=True)`` (without ``epochs``) is the DSA protocol and trains for
  1,000 epochs, as ``get_recipe('dsa')``.

  Args:
    name: one of :data:`RECIPE_NAMES` (``'kip'``, ``'dc'``, ``'dsa'``).
    **overrides: :class:`Recipe` fields to replace.

  Raises:
    ValueError: unknown name or field, or an invalid value.
  """
  if name not in _PRESETS:
    raise ValueError(f"unknown recipe {name!r}; known recipes: {list(RECIPE_NAMES)}.")
  overrides = dict(overrides)
  if (name == "dc" and overrides.get("augment") and "epochs" not in overrides
      and "steps" not in overrides):
    overrides["epochs"] = _PRESETS["dsa"].epochs
  return apply_overrides(_PRESETS[name], overrides)


def apply_overrides(recipe: Recipe, overrides: Mapping[str, Any]) -> Recipe:
  """``recipe`` with fields replaced; setting only one of ``steps`` / ``epochs`` clears the other.

  Raises:
    ValueError: unknown field or invalid value.
  """
  fields = {f.name for f in dataclasses.fields(Recipe)}
  unknown = set(overrides) - fields
  if unknown:
    raise ValueError(f"Recipe has no fields {sorted(unknown)}; it has {sorted(fields)}.")
  overrides = dict(overrides)
  if "epochs" in overrides and "steps" not in overrides:
    overrides["steps"] = None
  if "steps" in overrides and "epochs" not in overrides:
    overrides["epochs"] = None
  return dataclasses.replace(recipe, **overrides)
