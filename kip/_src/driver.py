"""The one host loop: drives any :class:`~kip._src.algorithm.Algorithm` (and the trainer).

:func:`run` initialises an algorithm, loops over its steps and returns its result; :func:`iterate`
is the loop itself, also used to train finite networks. The loop provides, for every method:

* **Keys**: step ``i`` gets ``fold_in(loop_key, i)`` with ``init_key, loop_key = split(key)``,
  so a run's randomness depends only on its key and the step count.
* **Checkpoints**: the whole state (optimizer state included) is written atomically to
  ``checkpoint.npz`` every ``checkpoint_every`` steps, when the time budget is spent and on
  Ctrl-C; the previous good checkpoint is kept as ``checkpoint.prev.npz``. Only states whose
  loss was checked finite (and whose leaves are finite) are written.
* **Resume**: ``resume=True`` restores the newest readable checkpoint (a corrupt newest falls
  back to the previous one, with a warning) after comparing its *fingerprint* (method, spec,
  data set identity and hash, preprocessing, seed, library version) with this run's, naming
  every field that differs. A resumed run ends bit-identical to an uninterrupted one.
* **Divergence**: a non-finite loss, or (for algorithms that watch their loss) a loss above
  ``factor`` times its running minimum for ``patience`` consecutive checks, stops the run with
  :class:`DivergenceError` naming the step, the values and what to change; the last good
  checkpoint stays.
* **Time budget**: stops cleanly after ``time_budget`` seconds, with a checkpoint; the result's
  ``metadata['stopped_early']`` says so.
* **Progress**: a ``tqdm`` bar on a terminal; elsewhere one log line every
  ``log_interval`` seconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from typing import Any, Callable, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from kip._src import checkpoint as ckpt
from kip._src import io as kio
from kip._src import random as krandom
from kip._src.algorithm import Algorithm

__all__ = ["Divergence", "DivergenceError", "RunFolderError", "LoopInfo", "iterate", "run",
           "fingerprint", "dataset_fingerprint", "CHECKPOINT_NAME", "PREVIOUS_CHECKPOINT_NAME"]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.npz"
PREVIOUS_CHECKPOINT_NAME = "checkpoint.prev.npz"


class DivergenceError(FloatingPointError):
  """The loss became non-finite or kept rising; the last good checkpoint is kept."""


class RunFolderError(FileExistsError):
  """The checkpoint folder holds another run's checkpoint and neither resume nor overwrite."""


@dataclasses.dataclass(frozen=True)
class Divergence:
  """When a run counts as diverged.

  A loss that is NaN or inf always stops the run. With ``factor`` set, so does a loss
  :math:`\\ell_t > \\text{factor} \\cdot \\min_{s \\le t} \\ell_s` for ``patience``
  consecutive checks (algorithms with ``watch_loss=False`` skip this rule).

  Attributes:
    factor: multiple of the running minimum (``None`` disables the rule).
    patience: consecutive checks above it.
  """
  factor: Optional[float] = 3.0
  patience: int = 20

  def __post_init__(self):
    if self.factor is not None and not (self.factor > 1 and np.isfinite(self.factor)):
      raise ValueError(f"Divergence.factor={self.factor} must be a finite number > 1 (or None).")
    if self.patience < 1:
      raise ValueError(f"Divergence.patience={self.patience} must be >= 1.")


@dataclasses.dataclass
class LoopInfo:
  """What :func:`iterate` did: steps, history and timings."""
  start: int
  count: int
  history: dict
  stopped_early: bool = False
  first_step_seconds: float = 0.0
  loop_seconds: float = 0.0


# ----------------------------------------------------------------------------- fingerprints
def dataset_fingerprint(dataset) -> dict[str, Any]:
  """Name, sizes and a SHA-1 of the training and test arrays of ``dataset``."""
  h = hashlib.sha1()
  for name in ("x_train", "y_train", "x_test", "y_test"):
    a = getattr(dataset, name, None)
    if a is not None:
      a = np.ascontiguousarray(np.asarray(a))
      h.update(str((a.dtype.str, a.shape)).encode())
      h.update(a.data)
  return {"name": getattr(dataset, "name", None),
          "train_shape": list(np.shape(dataset.x_train)),
          "test_shape": list(np.shape(getattr(dataset, "x_test", ()))),
          "num_classes": int(dataset.num_classes), "sha1": h.hexdigest()}


def _preprocessing_of(dataset) -> Any:
  prep = getattr(dataset, "preprocessing", None)
  if prep is None:
    return None
  if hasattr(prep, "describe"):
    return prep.describe()
  fields = {}
  for name in ("kind", "zca_reg", "variant"):
    if hasattr(prep, name):
      fields[name] = getattr(prep, name)
  return fields or str(type(prep).__name__)


def fingerprint(algorithm: Algorithm, dataset, seed: Any) -> dict[str, Any]:
  """Everything that determines a run: method, spec, data, preprocessing, seed, version."""
  from kip._src.distilled import library_versions
  spec = _jsonable(dict(algorithm.spec))
  if isinstance(spec.get("config"), dict):
    spec["config"].pop("steps", None)  # more steps is a continuation, not another run
  return _jsonable({"method": algorithm.name, "spec": spec,
                    "data": dataset_fingerprint(dataset),
                    "preprocessing": _preprocessing_of(dataset), "seed": seed,
                    "kip_version": library_versions().get("kip")})


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
  """Dotted names of the fields that differ between two JSON trees."""
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for k in sorted(set(old) | set(new), key=str):
      out += _diff(old.get(k, "<missing>"), new.get(k, "<missing>"), f"{prefix}{k}.")
    return out
  if old != new:
    return [f"{prefix[:-1] or 'value'}: checkpoint {_short(old)} vs this run {_short(new)}"]
  return []


def _short(x: Any) -> str:
  s = json.dumps(x, default=str)
  return s if len(s) <= 60 else s[:57] + "..."


def _jsonable(x: Any) -> Any:
  return json.loads(json.dumps(x, default=str))


# ----------------------------------------------------------------------------- checkpoints
def _paths(directory: str) -> tuple[str, str]:
  return (os.path.join(directory, CHECKPOINT_NAME),
          os.path.join(directory, PREVIOUS_CHECKPOINT_NAME))


def _save(directory: str, state: Any, meta: Mapping[str, Any]) -> None:
  newest, previous = _paths(directory)
  if os.path.exists(newest):
    os.replace(newest, previous)
  ckpt.save(newest, state, meta)


def _restore(directory: str, template: Any) -> Optional[tuple[Any, dict]]:
  """The newest readable checkpoint in ``directory`` (``None`` if there is none)."""
  newest, previous = _paths(directory)
  errors = []
  for path in (newest, previous):
    if not os.path.exists(path):
      continue
    try:
      state, meta = ckpt.restore(path, template)
    except ValueError as e:
      if "different state structure" in str(e) or "but this run needs" in str(e):
        raise  # readable, but another run's: not a corruption to fall back from
      # (a corrupt member is named in the message too, e.g. "Bad CRC-32 for 'leaf_00000'")
      errors.append(f"{path}: {e}")
      logger.warning("checkpoint %s is unreadable (%s); trying the previous one", path, e)
      continue
    if path == previous:
      logger.warning("resuming from the previous checkpoint %s", path)
    return state, meta
  if errors:
    raise ValueError("no readable checkpoint: " + "; ".join(errors) + ". Start fresh with "
                     "overwrite=True (CLI: --overwrite).")
  return None


def _stored_fingerprint(directory: str) -> Optional[dict]:
  """The fingerprint in the newest readable checkpoint's metadata (``None`` if none)."""
  for path in _paths(directory):
    try:
      return kio.load_npz(path, kind="checkpoint")[1].get("fingerprint")
    except (OSError, ValueError):
      continue
  return None


def has_checkpoint(directory: Optional[Union[str, os.PathLike]]) -> bool:
  """Whether ``directory`` holds a checkpoint (newest or previous)."""
  if directory is None:
    return False
  return any(os.path.exists(p) for p in _paths(os.fspath(directory)))


def _tree_finite(tree: Any) -> bool:
  leaves = [x for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)


# ----------------------------------------------------------------------------- the loop
def _progress_sink(total: int, initial: int, desc: str, progress: bool, log_interval: float):
  """A tqdm bar on a terminal, else a callable logging one line every ``log_interval`` s."""
  if not progress:
    return None
  if getattr(sys.stderr, "isatty", lambda: False)():
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)
  return _LogProgress(total, initial, desc, log_interval)


class _LogProgress:
  """Progress as log lines, at most one every ``interval`` seconds (for files and pipes)."""

  def __init__(self, total, initial, desc, interval):
    self.total, self.n, self.desc, self.interval = total, initial, desc, interval
    self.last = time.time()
    self.postfix = {}

  def update(self, k):
    self.n += k
    now = time.time()
    if now - self.last >= self.interval or self.n >= self.total:
      self.last = now
      extra = " ".join(f"{a}={b}" for a, b in self.postfix.items())
      logger.info("%s: step %d/%d %s", self.desc, self.n, self.total, extra)

  def set_postfix(self, post):
    self.postfix = dict(post)

  def close(self):
    pass


def iterate(step: Callable, state: Any, data: Any, steps: int, *, key: jax.Array,
            start: int = 0, history: Optional[dict] = None, save: Optional[Callable] = None,
            checkpoint_every: int = 0, eval_every: int = 0,
            eval_fn: Optional[Callable[[Any], Mapping[str, float]]] = None,
            time_budget: Optional[float] = None, divergence: Divergence = Divergence(),
            watch_loss: bool = True, hint: str = "lower the learning rate", desc: str = "",
            progress: bool = True, log_interval: float = 10.0, sync_every: int = 1,
            callback: Optional[Callable[[int, dict], None]] = None) -> tuple[Any, LoopInfo]:
  """Runs ``step(state, data, fold_in(key, i))`` for ``i = start .. steps - 1``.

  Args:
    step: ``(state, data, key) -> (state, metrics)``; ``metrics['loss']`` is watched.
    state: the state at step ``start``.
    data: passed to every step.
    steps: total steps (the loop stops at ``steps``).
    key: the loop key; step ``i`` gets ``fold_in(key, i)``.
    start: the first step's index (``> 0`` after a resume).
    history: the history to extend (from a checkpoint), ``{'loss': [...], 'eval': [...]}``.
    save: ``save(state, info)`` writes a checkpoint (``None``: no checkpoints).
    checkpoint_every: steps between checkpoints (0: only at the end / on interruption).
    eval_every: steps between ``eval_fn(state)`` calls (0: only at the end, if given); one
      runs at the last step, also when the time budget ends the loop there.
    eval_fn: ``state -> {name: float}``, logged and kept in ``history['eval']``.
    time_budget: seconds after which the loop stops cleanly (``None``: no limit).
    divergence: the :class:`Divergence` rule.
    watch_loss: apply the rising-loss rule (a non-finite loss always stops).
    hint: what to change, said when the loss diverges.
    desc: progress label.
    progress: show progress (tqdm on a terminal, log lines otherwise).
    log_interval: seconds between progress log lines when not on a terminal.
    sync_every: metrics are fetched (and divergence checked) every this many steps.
    callback: ``callback(step, metrics)`` after every fetched step.

  Returns:
    ``(state, LoopInfo)``.

  Raises:
    DivergenceError: see :class:`Divergence`; the state of the last good check is saved.
    KeyboardInterrupt: after saving the last checked state.
  """
  history = history if history is not None else {"loss": [], "eval": []}
  history.setdefault("loss", [])
  history.setdefault("eval", [])
  info = LoopInfo(start=start, count=start, history=history)
  good = state  # the last state whose loss was checked finite
  running_min, above = float("inf"), 0
  if history["loss"]:
    running_min = float(np.nanmin(history["loss"]))
  bar = _progress_sink(steps, start, desc, progress, log_interval)
  t0 = time.time()

  def checkpoint(s):
    if save is None:
      return
    if not _tree_finite(s):
      raise DivergenceError(f"{desc or 'run'}: the state became non-finite by step "
                            f"{info.count}; {hint}. The last good checkpoint is kept.")
    save(s, info)

  try:
    for i in range(start, steps):
      state, metrics = step(state, data, jax.random.fold_in(key, i))
      last = i + 1 == steps
      if (i + 1 - start) % sync_every and not last:
        continue
      metrics = {k: float(np.mean(np.asarray(v))) for k, v in metrics.items()}
      loss = metrics.get("loss", 0.0)
      if not np.isfinite(loss):
        raise DivergenceError(
            f"{desc or 'run'}: the loss became {loss} at step {i + 1} (last finite "
            f"{history['loss'][-1] if history['loss'] else 'none'}); {hint}.")
      if watch_loss and divergence.factor is not None and running_min > 0:
        above = above + 1 if loss > divergence.factor * running_min else 0
        if above >= divergence.patience:
          raise DivergenceError(
              f"{desc or 'run'}: the loss rose to {loss:.6g} at step {i + 1}, above "
              f"{divergence.factor:g} x its minimum {running_min:.6g} for {above} checks in a "
              f"row; {hint}.")
      running_min = min(running_min, loss)
      good = state
      info.count = i + 1
      history["loss"].append(loss)
      if i == start:  # the first step of a process includes compilation
        info.first_step_seconds = time.time() - t0
      post = {"loss": f"{loss:.4g}"}
      out_of_time = (time_budget is not None and time.time() - t0 > time_budget
                     and not last)
      if eval_fn is not None and ((eval_every and (i + 1) % eval_every == 0) or last
                                  or out_of_time):
        ev = {k: float(v) for k, v in eval_fn(state).items()}
        history["eval"].append([i + 1, ev])
        post.update({k: f"{v:.4f}" for k, v in ev.items()})
        logger.info("%s step %d loss %.6g %s", desc, i + 1, loss,
                    " ".join(f"{k} {v:.4f}" for k, v in ev.items()))
      if bar is not None:
        bar.set_postfix(post)
        bar.update(i + 1 - bar.n)
      if callback is not None:
        callback(i + 1, metrics)
      if checkpoint_every and (i + 1) % checkpoint_every == 0 and not last:
        checkpoint(state)
      if out_of_time:
        info.stopped_early = True
        logger.info("%s: time budget of %g s spent after step %d of %d", desc, time_budget,
                    i + 1, steps)
        break
  except KeyboardInterrupt:
    checkpoint(good)
    logger.warning("%s interrupted at step %d%s", desc, info.count,
                   "; checkpoint saved" if save is not None else "")
    raise
  except DivergenceError as e:
    logger.error("%s", e)
    raise
  finally:
    if bar is not None:
      bar.close()
    info.loop_seconds = time.time() - t0
  checkpoint(state)
  return state, info


def run(algorithm: Algorithm, dataset, steps: Optional[int] = None, *,
        key: krandom.KeyLike = 0,
        checkpoint_dir: Optional[Union[str, os.PathLike]] = None, checkpoint_every: int = 100,
        resume: bool = False, overwrite: bool = False, eval_every: int = 0,
        eval_fn: Optional[Callable[[Any, Any], Mapping[str, float]]] = None,
        time_budget: Optional[float] = None, progress: bool = True,
        divergence: Divergence = Divergence(), log_interval: float = 10.0,
        callback: Optional[Callable[[int, dict], None]] = None):
  """Runs ``algorithm`` on ``dataset`` for ``steps`` steps; returns its ``DistilledSet``.

  Args:
    algorithm: an :class:`~kip._src.algorithm.Algorithm`.
    dataset: a ``kip.data.Dataset``.
    steps: total steps (default ``algorithm.default_steps``); must be >= the step count of a
      checkpoint being resumed.
    key: PRNG key or ``int`` seed; ``init_key, loop_key = split(key)``.
    checkpoint_dir: folder for ``checkpoint.npz`` (``None``: no checkpoints).
    checkpoint_every: steps between checkpoints (0: only at the end and on interruption).
    resume: continue from the checkpoint in ``checkpoint_dir`` (fingerprints must match).
    overwrite: start fresh although ``checkpoint_dir`` holds a checkpoint (it is replaced).
    eval_every: steps between evaluations, and one at the end, also when ``time_budget``
      stops the run (0: none).
    eval_fn: ``(state, dataset) -> {name: float}`` (default ``algorithm.eval_fn``).
    time_budget: seconds of stepping before a clean stop with a checkpoint.
    progress: show progress.
    divergence: the :class:`Divergence` rule.
    log_interval: seconds between progress lines when stderr is not a terminal.
    callback: ``callback(step, metrics)`` after every step.

  Returns:
    The algorithm's ``DistilledSet``, with ``metadata`` holding ``steps``, ``history``,
    ``seconds`` (all processes of a resumed run), ``steps_this_run``, ``stopped_early``,
    ``fingerprint`` and ``versions``.

  Raises:
    RunFolderError: ``checkpoint_dir`` holds a checkpoint and neither ``resume`` nor
      ``overwrite`` is set.
    ValueError: the checkpoint's fingerprint differs (each differing field is named), or it
      holds more steps than ``steps``.
    DivergenceError: see :class:`Divergence`.
  """
  from kip._src.distilled import library_versions
  steps = algorithm.default_steps if steps is None else int(steps)
  for name, value in (("steps", steps), ("checkpoint_every", checkpoint_every),
                      ("eval_every", eval_every)):
    if value < 0:
      raise ValueError(f"{name}={value} must be >= 0.")
  if time_budget is not None and not time_budget > 0:
    raise ValueError(f"time_budget={time_budget} must be > 0 seconds (or None).")
  if resume and overwrite:
    raise ValueError("resume and overwrite exclude each other: resume continues the checkpoint, "
                     "overwrite replaces it.")
  key, seed = krandom.as_key(key)
  k_init, k_loop = jax.random.split(key)
  t_start = time.time()
  directory = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
  if directory is not None and has_checkpoint(directory) and not (resume or overwrite):
    raise RunFolderError(
        f"{directory} already holds a checkpoint of another run; resume it with resume=True "
        f"(CLI: --resume) or replace it with overwrite=True (CLI: --overwrite).")
  fp = fingerprint(algorithm, dataset, seed)
  state = algorithm.init(k_init, dataset)
  history: dict = {"loss": [], "eval": []}
  seconds_before = 0.0
  if directory is not None and has_checkpoint(directory) and overwrite:
    for p in _paths(directory):
      if os.path.exists(p):
        os.remove(p)
    logger.warning("overwrite: deleted the checkpoints in %s", directory)
  elif resume and directory is not None:
    def other_run(diffs):
      return ValueError(f"the checkpoint in {directory} was written by a different run: "
                        + "; ".join(diffs) + ". Resume with the same settings, or start "
                        "fresh with overwrite=True (CLI: --overwrite).")

    try:
      restored = _restore(directory, state)
    except ValueError as e:  # another structure: name the settings that differ, if recorded
      stored = _stored_fingerprint(directory)
      diffs = [] if stored is None else _diff(stored, fp)
      if diffs:
        raise other_run(diffs) from e
      raise
    if restored is None:
      logger.info("resume requested but %s holds no checkpoint; starting fresh", directory)
    else:
      state, meta = restored
      diffs = _diff(meta.get("fingerprint"), fp)
      if diffs:
        raise other_run(diffs)
      done = int(meta.get("count", int(state.count)))
      if done > steps:
        raise ValueError(f"the checkpoint in {directory} holds {done} steps, more than "
                         f"steps={steps}; ask for steps >= {done}, or start fresh with "
                         "overwrite=True (CLI: --overwrite).")
      history = meta.get("history", history)
      seconds_before = float(meta.get("seconds", 0.0))
      logger.info("resumed %s from %s at step %d of %d", algorithm.name, directory, done, steps)
  start = int(state.count)
  data = algorithm.data(dataset)
  eval_fn = eval_fn or algorithm.eval_fn
  bound_eval = None if eval_fn is None or not eval_every else (lambda s: eval_fn(s, dataset))

  def save(s, info):
    ckpt_meta = {"fingerprint": fp, "history": info.history, "count": int(s.count),
                 "steps": steps, "seconds": seconds_before + time.time() - t_start}
    _save(directory, s, ckpt_meta)

  state, info = iterate(
      algorithm.step, state, data, steps, key=k_loop, start=start, history=history,
      save=None if directory is None else save, checkpoint_every=checkpoint_every,
      eval_every=eval_every, eval_fn=bound_eval, time_budget=time_budget,
      divergence=divergence, watch_loss=algorithm.watch_loss, hint=algorithm.hint,
      desc=algorithm.name, progress=progress, log_interval=log_interval, callback=callback)
  out = algorithm.result(state, dataset)
  meta = dict(out.metadata)
  meta.update({"method": algorithm.name, "spec": _jsonable(dict(algorithm.spec)), "seed": seed,
               "steps": int(state.count), "requested_steps": steps, "history": info.history,
               "seconds": seconds_before + time.time() - t_start,
               "loop_seconds": info.loop_seconds,
               "first_step_seconds": info.first_step_seconds,
               "steps_this_run": int(state.count) - start, "stopped_early": info.stopped_early,
               "fingerprint": fp, "versions": library_versions()})
  return dataclasses.replace(out, metadata=meta)
