"""``kip.distill``: the entry point users know, on top of the KIP / LS algorithms and the driver.

It builds a :class:`~kip._src.methods.kip.KIPConfig` (or ``LSConfig``) from its keyword
arguments, the algorithm from :func:`~kip._src.methods.kip.make_kip`, and runs it with
:func:`kip._src.driver.run` (checkpoints, resume, time budget, divergence detection).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Mapping, Optional, Union

import optax

from kip._src import driver
from kip._src.distilled import DistilledSet
from kip._src.methods import kip as kip_method
from kip._src.methods.kip import KIPConfig, KIPState, LSConfig, label_solve

__all__ = ["KIPConfig", "KIPState", "LSConfig", "distill", "label_solve"]

_KIP = KIPConfig()


def distill(dataset, support_size: Optional[int] = None, learn_labels: bool = _KIP.learn_labels,
            *, images_per_class: Optional[int] = None,
            kernel: Union[str, Mapping, Callable] = "fc", get: str = _KIP.get,
            steps: int = _KIP.steps, optimizer: Optional[optax.GradientTransformation] = None,
            learning_rate: float = _KIP.learning_rate,
            target_batch_size: int = _KIP.target_batch_size, reg: float = _KIP.reg,
            seed: int = 0, augment: Optional[str] = _KIP.augment, mode: str = "kip",
            learn_images: bool = _KIP.learn_images, loss: str = _KIP.loss,
            labels: str = _KIP.labels, target_sampling: str = _KIP.target_sampling,
            config: Optional[KIPConfig] = None,
            checkpoint_dir: Optional[Union[str, os.PathLike]] = None,
            checkpoint_every: int = 100, resume: bool = False, overwrite: bool = False,
            eval_every: int = 0, eval_size: int = 1000, progress: bool = True,
            callback: Optional[Callable[[int, dict], None]] = None,
            time_budget: Optional[float] = None, init=None) -> DistilledSet:
  """Distils ``dataset`` into a small support set with KIP (or LS).

  Args:
    dataset: a ``kip.data.Dataset``.
    support_size: total support images, class balanced (must divide by the class count);
      default 10 unless ``images_per_class`` or ``init`` is given (then ``len(init)``).
    learn_labels: learn the labels too (KIP with label learning).
    images_per_class: alternative to ``support_size``.
    kernel: ``'fc'``, ``'convnet'``, ``'convnet_rf'``, ``'learned_features'`` (FRePo: a
      pool of ConvNet-3s trained online on the support; or
      ``kip.kernels.learned_features(...)``), a spec dict, or any ``kernel_fn(x1, x2, get)``
      (e.g. from neural-tangents).
    get: ``'ntk'`` or ``'nngp'``.
    steps: optimisation steps.
    optimizer: any ``optax.GradientTransformation`` (default Adam at ``learning_rate``).
    learning_rate: for the default optimizer.
    target_batch_size: targets per step (class balanced, resampled each step).
    reg: relative ridge ``lambda = reg * tr(K_ss)/n``.
    seed: seeds the support initialisation, the target batches and augmentation.
    augment: ``None``, ``'flip'``, ``'crop'`` or ``'flip_crop'`` on the support at each step.
    mode: ``'kip'`` or ``'ls'`` (label solve on class-balanced real images; no steps).
    learn_images: set ``False`` to learn labels only.
    loss: ``'mse'`` or ``'platt'``.
    labels: ``'centred'`` (reference) or ``'one_hot'``.
    target_sampling: ``'without_replacement'`` (reference) or ``'with_replacement'``.
    config: a full :class:`KIPConfig` (then the hyperparameter arguments above are ignored,
      except ``support_size`` / ``images_per_class`` which must agree with it).
    checkpoint_dir: where ``checkpoint.npz`` is written every ``checkpoint_every`` steps (and
      on interruption); ``None`` disables checkpoints.
    checkpoint_every: steps between checkpoints (0: only at the end and on interruption).
    resume: continue from the checkpoint in ``checkpoint_dir``; the result is bit-identical
      to an uninterrupted run with the same arguments.
    overwrite: replace a checkpoint found in ``checkpoint_dir`` instead of refusing to start.
    eval_every: steps between KRR test-accuracy evaluations (0: only at the end).
    eval_size: test images used for those evaluations (class balanced).
    progress: show progress.
    callback: ``callback(step, metrics)`` after every step.
    time_budget: stop after this many seconds of optimisation (the set so far is returned and
      ``metadata['stopped_early']`` is set); ``None``: run all ``steps``.
    init: start KIP from this support instead of class-balanced real images (the
      reference): a ``kip.DistilledSet`` of this data set (e.g. a coreset, or another method's
      or run's set) or an ``(images, labels)`` pair. Its images are used as they are, its
      labels' argmax encoded as ``labels`` says (learned labels are not carried over; to
      continue a run exactly, use ``checkpoint_dir`` and ``resume``). Recorded in
      ``metadata['init']``.

  Returns:
    The :class:`~kip.DistilledSet`.
  """
  if support_size is None and images_per_class is None:
    if init is not None and mode == "kip":
      support_size = kip_method.describe_init(init)["images"]
    else:
      support_size = 10 if config is None else config.images_per_class * dataset.num_classes
  ipc = kip_method.resolve_images_per_class(dataset.num_classes, support_size, images_per_class)
  if mode == "ls":
    if init is not None:
      raise ValueError("init is a starting support for KIP; for a label solve on given images "
                       "use kip.label_solve(dataset, images).")
    ls_config = LSConfig(images_per_class=ipc, get=get, reg=reg, labels=labels)
    algorithm = kip_method.make_ls(ls_config, kernel, progress=progress)
    return driver.run(algorithm, dataset, 1, key=seed, checkpoint_dir=checkpoint_dir,
                      resume=resume, overwrite=overwrite, progress=False)
  if mode != "kip":
    raise ValueError(f"mode={mode!r}; use 'kip' or 'ls'.")
  if config is None:
    config = KIPConfig(images_per_class=ipc, learn_labels=learn_labels,
                       learn_images=learn_images, get=get, reg=reg,
                       target_batch_size=target_batch_size, steps=steps,
                       learning_rate=learning_rate, augment=augment, loss=loss, labels=labels,
                       target_sampling=target_sampling)
  elif config.images_per_class != ipc:
    raise ValueError(f"config.images_per_class={config.images_per_class} disagrees with "
                     f"support_size={support_size}; give one of them.")
  else:
    config = dataclasses.replace(config, images_per_class=ipc)
  algorithm = kip_method.make_kip(config, kernel, optimizer=optimizer, eval_size=eval_size,
                                  eval_seed=seed, init=init)
  return driver.run(algorithm, dataset, config.steps, key=seed, checkpoint_dir=checkpoint_dir,
                    checkpoint_every=checkpoint_every, resume=resume, overwrite=overwrite,
                    eval_every=eval_every, time_budget=time_budget, progress=progress,
                    callback=callback)
