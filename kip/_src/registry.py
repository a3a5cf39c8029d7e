"""The registry of distillation methods: name -> config class, factory, one-line description.

Every method follows the contract of :mod:`kip._src.algorithm`; its config is a frozen
dataclass whose first field is ``images_per_class`` and which has a ``steps`` field (the
number of driver steps it asks for; 1 for coresets). The CLI, the benchmark runner and the
cross-architecture study build methods only through :func:`make`.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

from kip._src.algorithm import Algorithm

__all__ = ["Method", "METHODS", "get", "names", "make", "make_config"]


@dataclasses.dataclass(frozen=True)
class Method:
  """One registered method (the module is imported on first use).

  Attributes:
    name: registry name.
    module: module holding the config class and the factory.
    config_name: the frozen config dataclass's name in ``module``.
    factory_name: ``factory(config, **components) -> Algorithm`` in ``module``.
    description: one line.
  """
  name: str
  module: str
  config_name: str
  factory_name: str
  description: str

  @property
  def config_class(self) -> type:
    return getattr(importlib.import_module(self.module), self.config_name)

  @property
  def factory(self) -> Callable[..., Algorithm]:
    return getattr(importlib.import_module(self.module), self.factory_name)


_M = "kip._src.methods."
METHODS: dict[str, Method] = {m.name: m for m in [
    Method("kip", _M + "kip", "KIPConfig", "make_kip",
           "Kernel Inducing Points: support images (and labels) optimised for KRR."),
    Method("ls", _M + "kip", "LSConfig", "make_ls",
           "Label Solve: closed-form KRR labels for class-balanced real images."),
    Method("dc", _M + "dc", "DCConfig", "make_dc",
           "Dataset Condensation: gradient matching on fresh ConvNets."),
    Method("dsa", _M + "dsa", "DSAConfig", "make_dsa",
           "DC with Differentiable Siamese Augmentation."),
    Method("dm", _M + "dm", "DMConfig", "make_dm",
           "Distribution Matching: mean embeddings of random networks."),
    Method("dd", _M + "dd", "DDConfig", "make_dd",
           "Dataset Distillation (Wang et al. 2018): unrolled SGD, learned step sizes."),
    Method("poison", _M + "poisoning", "PoisonConfig", "make_poison",
           "DD data poisoning: images that make trained networks send class K to T."),
    Method("random", _M + "coresets", "RandomConfig", "make_random",
           "Random real images, class balanced."),
    Method("herding", _M + "coresets", "HerdingConfig", "make_herding",
           "Herding: greedy match of the class mean in feature space."),
    Method("kcenter", _M + "coresets", "KCenterConfig", "make_kcenter",
           "k-center greedy coreset in feature space."),
    Method("kmeans", _M + "coresets", "KMeansConfig", "make_kmeans",
           "k-means per class (centroids, or the nearest real images)."),
    Method("class_mean", _M + "coresets", "ClassMeanConfig", "make_class_mean",
           "Class means (images_per_class=1) or k-means centroids."),
]}


def names() -> list[str]:
  """Registered method names."""
  return list(METHODS)


def get(name: str) -> Method:
  """The :class:`Method` called ``name``.

  Raises:
    ValueError: unknown name (the message lists the registered ones).
  """
  if name not in METHODS:
    raise ValueError(f"method={name!r} is not registered; choose one of {names()}.")
  return METHODS[name]


def make_config(name: str, images_per_class: int, **overrides: Any):
  """``config_class(images_per_class=..., **overrides)`` of method ``name``.

  Raises:
    ValueError: an override that the config does not have (its fields are listed).
  """
  cls = get(name).config_class
  fields = {f.name for f in dataclasses.fields(cls)}
  bad = sorted(set(overrides) - fields)
  if bad:
    raise ValueError(f"{name} has no option(s) {bad}; its config fields are {sorted(fields)}.")
  return cls(images_per_class=images_per_class, **overrides)


def make(name: str, config=None, *, images_per_class: int | None = None,
         **components: Any) -> Algorithm:
  """Builds method ``name``'s :class:`Algorithm` from ``config`` (or ``images_per_class``)."""
  method = get(name)
  if config is None:
    if images_per_class is None:
      raise ValueError("give a config or images_per_class.")
    config = make_config(name, images_per_class)
  if not isinstance(config, method.config_class):
    raise ValueError(f"method {name!r} takes a {method.config_name}; got "
                     f"{type(config).__name__}.")
  return method.factory(config, **components)
