"""Kernel ridge-regression evaluation of a distilled set."""

from __future__ import annotations

import logging
import time
from typing import Callable, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from kip._src import krr
from kip._src.kernels.presets import get_kernel

__all__ = ["kernel_accuracy", "kernel_predictions"]

logger = logging.getLogger("kip.evaluate")

# Side of the small block timed to extrapolate the cost of the whole evaluation.
_PROBE = 8


def _pairs_per_second(f, x_a, x_b, probe: int = _PROBE) -> float:
  """Kernel pairs per second of the jitted ``f`` on a ``probe x probe`` block (compiled first)."""
  a, b = x_a[:probe], x_b[:probe]
  jax.block_until_ready(f(a, b))  # compile
  start = time.perf_counter()
  jax.block_until_ready(f(a, b))
  return a.shape[0] * b.shape[0] / max(time.perf_counter() - start, 1e-9)


def _log_expected_time(kernel_fn, x_s, x_t, get, batch_size: int) -> None:
  r"""Logs the expected time of :func:`krr.predict`, from one block timed (the first chunk of
  the real run also pays compilation).

  An exact kernel costs per pair: :math:`(n^2 + m n) / \text{rate}` for ``n`` support and
  ``m`` test images, the rate timed on a small block. A random-feature kernel costs per image
  (its features; the Gram products are negligible), and small blocks would mostly time per-call
  overhead, so one real test chunk (``batch_size`` images against the whole support, which is
  featurised again for every chunk) is timed: :math:`\lceil m / \text{batch} \rceil t_
  \text{chunk} + 2n / \text{rate}` with :math:`\text{rate} = (\text{batch} + n) /
  t_\text{chunk}` images/s.
  """
  n, m = x_s.shape[0], x_t.shape[0]
  f = jax.jit(lambda a, b: kernel_fn(a, b, get))
  if getattr(kernel_fn, "features", None) is not None:
    chunk = min(max(int(batch_size), 1), m)
    a = x_t[:chunk]
    jax.block_until_ready(f(a, x_s))  # compile
    start = time.perf_counter()
    jax.block_until_ready(f(a, x_s))
    seconds = max(time.perf_counter() - start, 1e-9)
    rate = (chunk + n) / seconds  # images/s
    chunks = -(-m // chunk)
    logger.info("kernel evaluation: features of %d support + %d test images in %d chunks of "
                "%d (support again per chunk) at %.0f images/s (timed on one chunk): expected "
                "%.0f s", n, m, chunks, chunk, rate, chunks * seconds + 2 * n / rate)
    return
  rate = _pairs_per_second(f, x_t, x_s, _PROBE)
  probe = f"timed on an {min(_PROBE, m)} x {min(_PROBE, n)} block"
  logger.info("kernel evaluation: %d x %d support + %d x %d test pairs at %.0f pairs/s "
              "(%s): expected %.0f s", n, n, m, n, rate, probe, (n * n + m * n) / rate)


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
                       batch_size: int = 1000, num_test: Optional[int] = None,
                       progress: bool = False) -> np.ndarray:
  """KRR predictions ``(m, K)`` on the test split from the distilled support set.

  ``kernel``, ``reg`` and ``get`` default to those recorded in ``distilled.metadata``. The
  expected time (one small block timed, extrapolated to all pairs) is logged before the kernels
  are computed; ``progress`` shows a bar over the test chunks.
  """
  distilled.check_compatible(dataset)
  kernel_fn = _kernel_of(distilled, kernel)
  cfg = distilled.metadata.get("config", {})
  reg = cfg.get("reg", krr.DEFAULT_REG) if reg is None else reg
  get = cfg.get("get", "ntk") if get is None else get
  x = dataset.x_test if num_test is None else dataset.x_test[:num_test]
  x_s, y_s, x = jnp.asarray(distilled.images), jnp.asarray(distilled.labels), jnp.asarray(x)
  krr._check(x_s, y_s, x)
  _log_expected_time(kernel_fn, x_s, x, get, batch_size)
  start = time.perf_counter()
  # np.asarray waits for the device: jax dispatches asynchronously, so timing the call alone
  # would log the dispatch (23 s for a kernel evaluation that took 234 s, measured).
  pred = np.asarray(krr.predict(kernel_fn, x_s, y_s, x, reg, get=get, batch_size=batch_size,
                                progress=progress))
  logger.info("kernel evaluation took %.1f s", time.perf_counter() - start)
  return pred


def kernel_accuracy(distilled, dataset, kernel: Union[None, str, Mapping, Callable] = None, *,
                    reg: Optional[float] = None, get: Optional[str] = None,
                    batch_size: int = 1000, num_test: Optional[int] = None,
                    progress: bool = False) -> float:
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
    progress: show a bar over the test chunks (the expected time is logged either way).
  """
  pred = kernel_predictions(distilled, dataset, kernel, reg=reg, get=get,
                            batch_size=batch_size, num_test=num_test, progress=progress)
  y = dataset.y_test if num_test is None else dataset.y_test[:num_test]
  return krr.accuracy(pred, y)
