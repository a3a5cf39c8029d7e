"""Kernel ridge-regression evaluation of a distilled set."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Union

import jax.numpy as jnp
import numpy as np

from kip._src import krr
from kip._src.kernels.presets import get_kernel

__all__ = ["kernel_accuracy", "kernel_predictions"]


def _kernel_of(distilled, kernel):
  if kernel is not None:
    return get_kernel(kernel)
  spec = distilled.metadata.get("kernel")
  if not isinstance(spec, Mapping) or spec.get("architecture") not in ("fc", "convnet"):
    raise ValueError("this distilled set records no rebuildable kernel (it was made with a user "
                     "kernel_fn or by a non-kernel method); pass kernel='fc', 'convnet' or a "
                     "kernel_fn.")
  return get_kernel(dict(spec))


def kernel_predictions(distilled, dataset, kernel: Union[None, str, Mapping, Callable] = None,
                       *, reg: Optional[float] = None, get: Optional[str] = None,
                       batch_size: int = 1000, num_test: Optional[int] = None) -> np.ndarray:
  """KRR predictions ``(m, K)`` on the test split from the distilled support set.

  ``kernel``, ``reg`` and ``get`` default to those recorded in ``distilled.metadata``.
  """
  distilled.check_compatible(dataset)
  kernel_fn = _kernel_of(distilled, kernel)
  cfg = distilled.metadata.get("config", {})
  reg = cfg.get("reg", krr.DEFAULT_REG) if reg is None else reg
  get = cfg.get("get", "ntk") if get is None else get
  x = dataset.x_test if num_test is None else dataset.x_test[:num_test]
  return np.asarray(krr.predict(kernel_fn, jnp.asarray(distilled.images),
                                jnp.asarray(distilled.labels), jnp.asarray(x), reg, get=get,
                                batch_size=batch_size))


def kernel_accuracy(distilled, dataset, kernel: Union[None, str, Mapping, Callable] = None, *,
                    reg: Optional[float] = None, get: Optional[str] = None,
                    batch_size: int = 1000, num_test: Optional[int] = None) -> float:
  """Test accuracy of kernel ridge regression from ``distilled`` on ``dataset.x_test``.

  .. math:: \\hat y = K_{ts}(K_{ss} + \\lambda I)^{-1} y_s,\\quad
     \\text{acc} = \\frac{1}{m}\\sum_t [\\arg\\max \\hat y_t = y_t].

  Args:
    distilled: a :class:`~kip.DistilledSet`.
    dataset: the ``kip.data.Dataset`` it was distilled from.
    kernel: kernel to use (default: the one recorded in the set's metadata).
    reg: relative ridge (default: recorded, else ``1e-6``).
    get: ``'ntk'`` or ``'nngp'`` (default: recorded, else ``'ntk'``).
    batch_size: test images per kernel call.
    num_test: evaluate on the first ``num_test`` test images only.
  """
  pred = kernel_predictions(distilled, dataset, kernel, reg=reg, get=get,
                            batch_size=batch_size, num_test=num_test)
  y = dataset.y_test if num_test is None else dataset.y_test[:num_test]
  return krr.accuracy(pred, y)
