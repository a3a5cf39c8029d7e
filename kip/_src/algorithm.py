"""The contract every distillation method follows.

A method is a *factory* that closes over its frozen config (and any non-serialisable
components, such as a user's ``kernel_fn``) and returns an :class:`Algorithm`::

  algorithm = make_kip(KIPConfig(images_per_class=10))     # or make_dc, make_dd, ...
  state = algorithm.init(key, dataset)                     # -> State (a NamedTuple of arrays)
  data = algorithm.data(dataset)                           # what step reads (on device)
  state, metrics = algorithm.step(state, data, step_key)   # jitted where it pays
  distilled = algorithm.result(state, dataset)             # -> DistilledSet

* ``init(key, dataset) -> State``: the initial state. States are NamedTuples holding arrays
  only, with a ``count`` field (``()`` int32, completed steps), so that a checkpoint is the
  state's leaves and restoring needs only a freshly initialised state as template.
* ``data(dataset) -> Data``: the pytree ``step`` samples from (the training set on device, a
  class-indexed pool, ...). Built once per run; ``step`` draws its batches with its key, so
  every step's randomness is a function of ``(key, count)`` alone.
* ``step(state, data, key) -> (state, metrics)``: one step; ``metrics`` is a dict of scalars
  and holds ``'loss'`` (what divergence detection watches).
* ``result(state, dataset) -> DistilledSet``: the distilled set in the data set's
  preprocessed space.
* ``spec``: a JSON-serialisable description of everything the algorithm was built from (the
  config, the kernel spec, ...), recorded in checkpoints and results.
* ``default_steps``: the number of steps the config asks for; ``hint``: what to change when
  the loss diverges.

Configs are frozen dataclasses that hold names and numbers only (optimizers by name and
hyperparameters), so they hash, compare equal when equal, and serialise to JSON.

Coresets are one-step algorithms: their ``step`` does the whole selection on the host.

The single host loop that drives an :class:`Algorithm` (progress, checkpoints, resume, time
budget, divergence) is :func:`kip._src.driver.run`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Optional, Protocol

import jax

__all__ = ["Algorithm", "InitFn", "DataFn", "StepFn", "ResultFn", "Metrics", "config_dict",
           "cached_step"]

Metrics = Mapping[str, jax.Array]


class InitFn(Protocol):

  def __call__(self, key: jax.Array, dataset: Any) -> Any:
    ...


class DataFn(Protocol):

  def __call__(self, dataset: Any) -> Any:
    ...


class StepFn(Protocol):

  def __call__(self, state: Any, data: Any, key: jax.Array) -> tuple[Any, Metrics]:
    ...


class ResultFn(Protocol):

  def __call__(self, state: Any, dataset: Any) -> Any:
    ...


class Algorithm(NamedTuple):
  """A distillation method: ``init`` / ``data`` / ``step`` / ``result`` (see the module doc).

  Attributes:
    name: registry name (``'kip'``, ``'dc'``, ...).
    init: ``(key, dataset) -> state``.
    data: ``(dataset) -> data`` read by ``step``.
    step: ``(state, data, key) -> (state, metrics)``.
    result: ``(state, dataset) -> DistilledSet``.
    spec: JSON-serialisable description (config, kernel, ...).
    default_steps: steps the config asks for.
    hint: what to change when the loss diverges (said in the error).
    eval_fn: optional ``(state, dataset) -> dict`` of scalars for periodic evaluation.
    watch_loss: whether a rising loss counts as divergence (``False`` for methods whose loss
      is not expected to decrease, e.g. one drawn on a fresh network every step); a
      non-finite loss always does.
  """
  name: str
  init: InitFn
  data: DataFn
  step: StepFn
  result: ResultFn
  spec: Mapping[str, Any]
  default_steps: int
  hint: str = "lower the learning rate"
  eval_fn: Optional[Callable[[Any, Any], Mapping[str, float]]] = None
  watch_loss: bool = True


def config_dict(config: Any) -> dict[str, Any]:
  """A frozen config dataclass as a JSON-ready dict (tuples become lists)."""
  import json
  return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def cached_step(step_factory: Callable[..., Any], config: Any, *components: Any) -> Any:
  """``step_factory(config with steps=1, *components)`` through its ``functools.lru_cache``.

  The jitted step never reads ``config.steps``, so runs that differ only in length share one
  compiled step. Components that cannot be hashed (a user's optax optimizer) bypass the cache
  (``step_factory.__wrapped__``) instead of failing.
  """
  key = dataclasses.replace(config, steps=1)
  try:
    return step_factory(key, *components)
  except TypeError:  # an unhashable component: no cache
    return step_factory.__wrapped__(key, *components)
