"""Benchmark options -> registry methods: where a ``distill`` entry becomes an ``Algorithm``.

The suite runner and the cross-architecture study build every method here, through the
:mod:`kip.methods` registry and its driver; nothing is special-cased per method. A
``distill`` entry (a flat dict, as in ``benchmarks/configs/*.json``) holds three kinds of keys:

* fields of the method's config dataclass (``kip.methods.get(name).config_class``, e.g.
  ``KIPConfig.learning_rate``, ``DCConfig.batch_real``, ``LSConfig.num_targets``): passed to
  ``kip.methods.make_config``; JSON lists become tuples;
* ``kernel``: a kernel name, spec dict (``{"architecture": "fc", "depth": 3}``) or
  ``kernel_fn``, passed to factories that take a ``kernel_fn`` (KIP, LS);
* ``checkpoint_every``: steps between the driver's checkpoints.

Anything else raises ``ValueError`` naming the key and every accepted one.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any, Mapping, Optional, Union

__all__ = ["COMPONENT_OPTIONS", "RUN_OPTIONS", "MethodSpec", "resolve", "make_algorithm",
           "distill"]

# Option key -> factory keyword, for components that are not config fields.
COMPONENT_OPTIONS = {"kernel": "kernel_fn"}
# Options of ``kip.methods.run``.
RUN_OPTIONS = ("checkpoint_every",)


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """A method resolved from options, not yet built.

  Attributes:
    name: registry name.
    config: the method's frozen config dataclass.
    components: factory keywords besides the config (``kernel_fn``).
    run_options: keywords of ``kip.methods.run`` (``checkpoint_every``).
  """
  name: str
  config: Any
  components: Mapping[str, Any]
  run_options: Mapping[str, Any]


def _factory_parameters(name: str) -> set[str]:
  from kip import methods as registry
  return set(inspect.signature(registry.get(name).factory).parameters)


def resolve(name: str, images_per_class: int, options: Mapping[str, Any],
            **components: Any) -> MethodSpec:
  """Splits ``options`` into config fields, components and driver options; builds the config.

  Args:
    name: registry name (``'kip'``, ``'ls'``, ``'dc'``, ``'random'``, ...).
    images_per_class: the config's ``images_per_class``.
    options: a ``distill`` entry (see the module docstring).
    **components: further factory keywords (e.g. a ``feature_fn``).

  Returns:
    The :class:`MethodSpec`; the config is validated by its own ``__post_init__``.

  Raises:
    ValueError: unknown method, unknown option (naming the accepted ones), a component the
      method's factory does not take, or a bad value.
  """
  from kip import kernels
  from kip import methods as registry
  method = registry.get(name)
  fields = [f.name for f in dataclasses.fields(method.config_class)
            if f.name != "images_per_class"]
  params = _factory_parameters(name)
  config_opts, run_options, comps = {}, {}, dict(components)
  for key, value in options.items():
    if key in fields:
      config_opts[key] = tuple(value) if isinstance(value, list) else value
    elif key in RUN_OPTIONS:
      run_options[key] = value
    elif key in COMPONENT_OPTIONS and COMPONENT_OPTIONS[key] in params:
      comps[COMPONENT_OPTIONS[key]] = value
    else:
      comp = [k for k, p in COMPONENT_OPTIONS.items() if p in params]
      raise ValueError(f"method {name!r} has no option {key!r}; accepted: the fields of "
                       f"{method.config_name} {sorted(fields)}"
                       + (f", the components {comp}" if comp else "")
                       + f" and the driver options {list(RUN_OPTIONS)}.")
  if "kernel_fn" in comps:  # a bad kernel spec fails here, before any compute
    comps["kernel_fn"] = kernels.get_kernel(comps["kernel_fn"])
  config = registry.make_config(name, int(images_per_class), **config_opts)
  return MethodSpec(name, config, comps, run_options)


def make_algorithm(spec: MethodSpec, *, progress: bool = False):
  """``kip.methods.make(spec.name, spec.config, **spec.components)`` (with ``progress`` where
  the factory shows progress of its own, as LS's label solve does)."""
  from kip import methods as registry
  comps = dict(spec.components)
  if "progress" in _factory_parameters(spec.name):
    comps.setdefault("progress", progress)
  return registry.make(spec.name, spec.config, **comps)


def distill(spec: MethodSpec, dataset, *, key: Any,
            checkpoint_dir: Optional[Union[str, os.PathLike]] = None,
            time_budget: Optional[float] = None, progress: bool = False):
  """Builds ``spec``'s algorithm through the registry and runs it with ``kip.methods.run``.

  Args:
    spec: from :func:`resolve`.
    dataset: a ``kip.data.Dataset``.
    key: PRNG key or ``int`` seed of the run.
    checkpoint_dir: checkpoints go here, and a checkpoint found here is resumed (the driver
      checks that it was written by the same run); ``None``: no checkpoints.
    time_budget: seconds of stepping before a clean stop with a checkpoint (the result's
      ``metadata['stopped_early']`` then says so).
    progress: show progress.

  Returns:
    The ``DistilledSet`` (driver metadata: ``steps``, ``seconds``, ``stopped_early``, ...).
  """
  from kip import methods as registry
  algorithm = make_algorithm(spec, progress=progress)
  return registry.run(algorithm, dataset, key=key, checkpoint_dir=checkpoint_dir,
                      resume=checkpoint_dir is not None, time_budget=time_budget,
                      progress=progress, **spec.run_options)
