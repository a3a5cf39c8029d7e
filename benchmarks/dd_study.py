"""The Dataset Distillation study: milder compression, other architectures, 10 restarts.

Two questions asked of the original Dataset Distillation (Wang et al. 2018, run with the
reference defaults of ``kip.baselines.dd``: random xavier-normal initialisations, one batch of
synthetic images per inner step cycled with :math:`i(k) = k \\bmod s`, three epochs, learned
softplus step sizes, Adam with :math:`\\beta_1 = 0.5` and ten halvings of its learning rate
over the run): how does DD behave at a *mild* compression (3x: a synthetic set a third the size
of the training set) beside the extreme one (one image per class), and do the distilled data
train *other architectures*?

* Toy problem: scikit-learn's two moons (2-D, two classes, non-linear boundary; fixed seed,
  stratified train / test split) with LinearNet (no hidden layer), NonLinearNet (one hidden
  layer) and MoreNonLinearNet (three hidden layers), fully connected, width 32.
* Fashion-MNIST with FC (2 hidden layers of 256), LeNet and ConvNet-3 (width 8, instance
  norm). On this CPU the training set is a class-balanced subset of 300 images
  (``--fmnist-train``; 3x: 100 synthetic images, one per class in each of the reference's 10
  inner steps) tested on 2,000 test images, with 500 outer steps (``--fmnist-steps``); 3x of
  all 60,000 images (20,000 synthetic images, 30 unrolled steps through them per outer step)
  is out of a 2-core CPU's reach (LeNet: about 4 s per outer step already at 1,500 images).

Tables (every cell: mean +- std of test accuracy over ``--restarts`` freshly initialised
networks): original vs distilled data per architecture; the cross-architecture matrix (rows:
distilled for, columns: trained and tested); the row of data distilled for all architectures
at once; each with every step strategy of ``kip.baselines.evaluate_dd`` (``raw``, ``rescaled``,
``tuned``). Figures (PNG): the toy train / test scatter; decision rules learned from original vs
distilled data; the synthetic objects; the learned step sizes averaged over ``--lr-seeds``
distillations with a band of one standard deviation.

  python -m benchmarks.dd_study            # the full study (about 50 minutes on 2 quiet cores)
  python -m benchmarks.dd_study --quick    # about 5 minutes, small settings
      [--parts toy,fmnist] [--out DIR] [--restarts 10] [--strategies raw,rescaled,tuned]
      [--fmnist-train 300] [--fmnist-steps 500] [--toy-steps 2000]
  python -m benchmarks.dd_study --write-md benchmarks/results/dd_study   # markdown from JSON
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from typing import Any, Optional

import jax
import numpy as np

import kip
from kip.baselines import dd
from benchmarks import common

logger = logging.getLogger("benchmarks.dd_study")

TOY_ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    "LinearNet": ("fc", {"depth": 0}),
    "NonLinearNet": ("fc", {"depth": 1, "width": 32}),
    "MoreNonLinearNet": ("fc", {"depth": 3, "width": 32}),
}
FMNIST_ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    "FC": ("fc", {"depth": 2, "width": 256}),
    "LeNet": ("lenet", {}),
    "ConvNet-3": ("convnet", {"width": 8}),
}
ALL = "all three"


@dataclasses.dataclass(frozen=True)
class StudySettings:
  """The sizes of one run of the study (``full`` and ``quick`` below).

  Attributes:
    toy_train / toy_test: two-moons points in each split.
    toy_noise: the moons' noise.
    toy_steps: DD outer steps on the toy problem.
    fmnist_train / fmnist_test: class-balanced Fashion-MNIST subset sizes.
    fmnist_steps: DD outer steps on Fashion-MNIST.
    fmnist_batch: real images per outer step on Fashion-MNIST.
    restarts: networks per table cell.
    lr_seeds: distillations behind the step-size figure (toy).
    max_batches: the largest number of synthetic batches ``s`` (``s`` divides ipc).
    original_epochs: SGD epochs of the networks trained on the original data.
  """
  toy_train: int = 600
  toy_test: int = 300
  toy_noise: float = 0.2
  toy_steps: int = 2000
  fmnist_train: int = 300
  fmnist_test: int = 2000
  fmnist_steps: int = 500
  fmnist_batch: int = 256
  restarts: int = 10
  lr_seeds: int = 10
  max_batches: int = 10
  original_epochs: int = 100


SETTINGS = {
    "full": StudySettings(),
    "quick": StudySettings(toy_steps=200, fmnist_test=500, fmnist_steps=5, restarts=3,
                           lr_seeds=2, original_epochs=20),
    # The notebook's setting: the toy problem in well under a minute.
    "notebook": StudySettings(toy_train=300, toy_test=200, toy_steps=150, restarts=3,
                              lr_seeds=2, original_epochs=30),
}


# ----------------------------------------------------------------------------- data
def toy_dataset(settings: StudySettings, seed: int = 0):
  """Two moons as ``(n, 1, 1, 2)`` "images" in ``[0, 1]`` (standardised by ``kip.data``).

  Returns:
    The ``kip.data.Dataset``.
  """
  from sklearn.datasets import make_moons
  from sklearn.model_selection import train_test_split
  x, y = make_moons(n_samples=settings.toy_train + settings.toy_test, noise=settings.toy_noise,
                    random_state=seed)
  xtr, xte, ytr, yte = train_test_split(x, y, test_size=settings.toy_test, random_state=seed,
                                        stratify=y)
  lo, hi = xtr.min(0) - 0.1, xtr.max(0) + 0.1

  def scale(a):
    return np.clip((a - lo) / (hi - lo), 0, 1).astype(np.float32)[:, None, None, :]

  return kip.data.from_arrays("two_moons", scale(xtr), ytr, scale(xte), yte,
                              class_names=("moon 0", "moon 1"))


def fmnist_dataset(settings: StudySettings):
  return kip.data.load("fashion_mnist", n_train=settings.fmnist_train,
                       n_test=settings.fmnist_test)


# ----------------------------------------------------------------------------- one part
def _num_batches(ipc: int, max_batches: int) -> int:
  return max(d for d in range(1, min(ipc, max_batches) + 1) if ipc % d == 0)


def dd_config(ds, ipc: int, archs, steps: int, batch: int, max_batches: int) -> dd.DDConfig:
  """Reference DD with ``s`` batches and ten halvings of the outer learning rate per run."""
  n = len(ds.y_train)
  batch = min(batch, n)
  epochs = max(1, steps * batch // n)
  return dd.DDConfig(images_per_class=ipc, steps=steps, models=tuple(archs),
                     distill_steps=_num_batches(ipc, max_batches), batch_size=batch,
                     decay_epochs=max(1, epochs // 10))


def _cell(r) -> dict[str, Any]:
  return {"mean": r.mean, "std": r.std, "accuracies": list(r.accuracies),
          "step_scale": getattr(r, "step_scale", None)}


def _fmt(c: Optional[dict]) -> str:
  return "-" if c is None else f"{100 * c['mean']:.1f} ± {100 * c['std']:.1f}"


def run_part(part: str, settings: StudySettings, out: str, strategies=("raw", "rescaled", "tuned"),
             seed: int = 0, figures: bool = True) -> dict[str, Any]:
  """Distils, evaluates and draws one part (``'toy'`` or ``'fmnist'``); returns its results."""
  toy = part == "toy"
  ds = toy_dataset(settings, seed) if toy else fmnist_dataset(settings)
  archs = TOY_ARCHS if toy else FMNIST_ARCHS
  steps = settings.toy_steps if toy else settings.fmnist_steps
  batch = 1024 if toy else settings.fmnist_batch
  n = len(ds.y_train)
  res: dict[str, Any] = {"dataset": repr(ds), "train_images": n, "test_images": len(ds.y_test),
                         "archs": {k: [m, kw] for k, (m, kw) in archs.items()},
                         "settings": {}, "original": {}}
  original_recipe = {"epochs": settings.original_epochs, "batch_size": 64 if toy else 256}
  t0 = time.time()
  for name, (m, kw) in archs.items():
    r = kip.transfer.evaluate_full(ds, model=m, model_kwargs=kw, recipe="dc",
                                   restarts=settings.restarts, seed=seed + 7,
                                   recipe_overrides=original_recipe, progress=False)
    res["original"][name] = _cell(r)
    logger.info("%s original data, %s: %s", part, name, r)
  res["original_recipe"] = {"name": "dc", **original_recipe}
  res["original_seconds"] = time.time() - t0
  sets = {}
  for setting in ("3x", "1 per class"):
    ipc = dd.images_per_class_for(ds, 3) if setting == "3x" else 1
    entry = {"images_per_class": ipc, "synthetic_images": ipc * ds.num_classes,
             "compression": n / (ipc * ds.num_classes), "sets": {}, "matrix": {}}
    rows = {name: [arch] for name, arch in archs.items()}
    rows[ALL] = list(archs.values())
    for row, models in rows.items():
      cfg = dd_config(ds, ipc, models, steps, batch, settings.max_batches)
      t = time.time()
      distilled = dd.distill_dd(ds, ipc, cfg, seed, progress=False)
      h = distilled.metadata["history"]["loss"]
      sets[(setting, row)] = distilled
      entry["sets"][row] = {"seconds": time.time() - t, "first_loss": h[0],
                            "last_loss": float(np.mean(h[-max(1, len(h) // 20):])),
                            "step_sizes": distilled.metadata["step_sizes"],
                            "num_batches": cfg.num_batches, "inner_steps": cfg.num_inner_steps,
                            "config": cfg.to_dict()}
      logger.info("%s %s distilled for %s: %d x %d images, loss %.3f -> %.3f, %.0f s", part,
                  setting, row, ipc, ds.num_classes, h[0], entry["sets"][row]["last_loss"],
                  entry["sets"][row]["seconds"])
    for strategy in strategies:
      matrix = {}
      for row in rows:
        matrix[row] = {}
        for col, (m, kw) in archs.items():
          r = dd.evaluate_dd(sets[(setting, row)], ds, seed + 1000, settings.restarts,
                             model=m, model_kwargs=kw, step_strategy=strategy,
                             validation_size=min(1000, n))
          matrix[row][col] = _cell(r)
      entry["matrix"][strategy] = matrix
      logger.info("%s %s %s: %s", part, setting, strategy,
                  {r: {c: _fmt(v) for c, v in cols.items()} for r, cols in matrix.items()})
    res["settings"][setting] = entry
  res["seconds"] = time.time() - t0
  if figures:
    os.makedirs(out, exist_ok=True)
    res["figures"] = _figures(part, ds, archs, sets, settings, out, seed)
  return res


# ----------------------------------------------------------------------------- tables
def tables(part: str, res: dict[str, Any]) -> str:
  """Markdown tables of one part's results (architectures in the study's order)."""
  order = list(TOY_ARCHS) + list(FMNIST_ARCHS)
  archs = sorted(res["archs"], key=lambda a: order.index(a) if a in order else len(order))
  out = [f"### {part}: {res['dataset']}"]
  strategies = list(next(iter(res["settings"].values()))["matrix"])
  header = ["architecture", "original data"] + [
      f"{s} ({st})" for s in res["settings"] for st in strategies]
  rows = []
  for a in archs:
    rows.append([a, _fmt(res["original"][a])] + [
        _fmt(e["matrix"][st][a][a]) for e in res["settings"].values() for st in strategies])
  out += ["Original vs distilled data (the set distilled for the same architecture):", "",
          common.markdown_table(header, rows), ""]
  for setting, e in res["settings"].items():
    for st in strategies:
      out += [f"Cross-architecture, {setting} ({e['synthetic_images']} synthetic images, "
              f"compression {e['compression']:.0f}x), step strategy `{st}` (rows: distilled "
              "for; columns: trained and tested):", "",
              common.markdown_table(["distilled for"] + archs,
                                    [[r] + [_fmt(e["matrix"][st][r][c]) for c in archs]
                                     for r in archs + [ALL] if r in e["matrix"][st]]), ""]
  return "\n".join(out)


# ----------------------------------------------------------------------------- figures
def _figures(part, ds, archs, sets, settings, out, seed) -> list[str]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  written = []

  def save(fig, name):
    path = os.path.join(out, f"{part}_{name}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)

  if part == "toy":
    raw = lambda x: ds.preprocessing.invert(np.asarray(x))[:, 0, 0, :]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    for ax, (x, y, title) in zip(axes, ((ds.x_train, ds.y_train, "train"),
                                        (ds.x_test, ds.y_test, "test"))):
      p = raw(x)
      ax.scatter(p[:, 0], p[:, 1], c=y, cmap="coolwarm", s=8)
      ax.set_title(f"two moons, {title} ({len(y)} points)")
    save(fig, "data")
    g = np.linspace(0, 1, 120, dtype=np.float32)
    mesh_raw = np.stack(np.meshgrid(g, g), -1).reshape(-1, 1, 1, 2)
    mesh = ds.preprocessing.apply(mesh_raw)
    for setting in ("3x", "1 per class"):
      fig, axes = plt.subplots(2, len(archs), figsize=(4 * len(archs), 7.5), squeeze=False)
      for j, (name, (m, kw)) in enumerate(archs.items()):
        model = kip.transfer.get_model(m, ds.num_classes, **kw)
        orig = kip.transfer.train(model, ds.x_train, ds.y_train,
                                  kip.transfer.get_recipe("dc", epochs=settings.original_epochs,
                                                          batch_size=64),
                                  jax.random.PRNGKey(seed + 7))
        distilled = sets[(setting, name)]
        nets = dd.train_networks(distilled, ds, seed + 1000, 1)
        for i, (variables, net, title) in enumerate((
            (orig, model, f"{name}: original data"),
            (jax.tree.map(lambda a: a[0], nets.trained), nets.model,
             f"{name}: distilled ({len(distilled)} points)"))):
          ax = axes[i, j]
          prob = jax.nn.softmax(net.apply(variables, mesh))[:, 1].reshape(len(g), len(g))
          ax.contourf(g, g, np.asarray(prob), levels=20, cmap="coolwarm", alpha=0.6)
          ax.contour(g, g, np.asarray(prob), levels=[0.5], colors="k", linewidths=1)
          t = raw(ds.x_test)
          ax.scatter(t[:, 0], t[:, 1], c=ds.y_test, cmap="coolwarm", s=4, alpha=0.5)
          if i == 1:
            s = raw(distilled.images)
            ax.scatter(s[:, 0], s[:, 1], c=distilled.hard_labels, cmap="coolwarm", s=40,
                       marker="*", edgecolors="k")
          ax.set_xlim(0, 1)
          ax.set_ylim(0, 1)
          ax.set_title(title, fontsize=9)
      fig.suptitle(f"decision rules, {setting} (stars: synthetic points, may lie outside)")
      save(fig, f"decision_rules_{setting.replace(' ', '_')}")
    fig, axes = plt.subplots(1, len(archs) + 1, figsize=(4 * (len(archs) + 1), 3.6))
    for ax, row in zip(axes, list(archs) + [ALL]):
      s = sets[("3x", row)]
      p = raw(s.images)
      ax.scatter(p[:, 0], p[:, 1], c=s.hard_labels, cmap="coolwarm", s=10)
      ax.set_title(f"synthetic (3x), for {row}", fontsize=9)
    save(fig, "synthetic")
    # Learned step sizes over several distillations (seeds) of each architecture, 3x.
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, arch in archs.items():
      ipc = dd.images_per_class_for(ds, 3)
      cfg = dd_config(ds, ipc, [arch], settings.toy_steps, 1024, settings.max_batches)
      curves = np.asarray([sets[("3x", name)].metadata["step_sizes"]] + [
          dd.distill_dd(ds, ipc, cfg, seed + 1 + k, progress=False).metadata["step_sizes"]
          for k in range(settings.lr_seeds - 1)])
      mu, sd = curves.mean(0), curves.std(0)
      k = np.arange(1, len(mu) + 1)
      ax.plot(k, mu, label=name)
      ax.fill_between(k, mu - sd, mu + sd, alpha=0.25)
    ax.set_xlabel("inner step k")
    ax.set_ylabel("learned step size")
    ax.set_title(f"toy, 3x: mean ± std over {settings.lr_seeds} distillations")
    ax.legend(fontsize=8)
    save(fig, "step_sizes")
  else:
    for (setting, row), s in sets.items():
      if setting == "1 per class" or row == ALL:
        path = os.path.join(out, f"{part}_synthetic_{setting.replace(' ', '_')}_"
                                 f"{row.replace(' ', '_')}.png")
        s.grid(path, class_names=ds.class_names, max_images=50)
        written.append(path)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for (setting, row), s in sets.items():
      lrs = s.metadata["step_sizes"]
      ax.plot(np.arange(1, len(lrs) + 1), lrs, label=f"{setting}, {row}",
              ls="-" if setting == "3x" else "--")
    ax.set_xlabel("inner step k")
    ax.set_ylabel("learned step size")
    ax.set_title("Fashion-MNIST: learned step sizes (one distillation each)")
    ax.legend(fontsize=7)
    save(fig, "step_sizes")
  return [os.path.relpath(p, out) for p in written]


# ----------------------------------------------------------------------------- main
def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="small settings (a few minutes)")
  p.add_argument("--parts", default="toy,fmnist")
  p.add_argument("--restarts", type=int, default=None)
  p.add_argument("--strategies", default="raw,rescaled,tuned")
  p.add_argument("--fmnist-train", type=int, default=None,
                 help="class-balanced Fashion-MNIST training images (3x: a third of them)")
  p.add_argument("--fmnist-steps", type=int, default=None, help="DD outer steps, Fashion-MNIST")
  p.add_argument("--toy-steps", type=int, default=None, help="DD outer steps, toy problem")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None)
  p.add_argument("--write-md", metavar="DIR", default=None,
                 help="only rewrite DIR/dd_study.md from DIR/dd_study.json")
  a = p.parse_args(argv)
  common.setup_logging()
  if a.write_md:
    with open(os.path.join(a.write_md, "dd_study.json")) as f:
      return write_markdown(json.load(f), a.write_md)
  settings = SETTINGS["quick" if a.quick else "full"]
  if a.restarts is not None:
    settings = dataclasses.replace(settings, restarts=a.restarts)
  for name in ("fmnist_train", "fmnist_steps", "toy_steps"):
    if getattr(a, name) is not None:
      settings = dataclasses.replace(settings, **{name: getattr(a, name)})
  out = a.out or os.path.join(common.RESULTS_DIR, "dd_study_quick" if a.quick else "dd_study")
  strategies = tuple(a.strategies.split(","))
  t0 = time.time()
  results = {"settings": dataclasses.asdict(settings), "quick": a.quick, "seed": a.seed,
             "machine": common.machine(), "parts": {}}
  for part in a.parts.split(","):
    res = run_part(part, settings, out, strategies, a.seed)
    results["parts"][part] = res
    logger.info("%s", tables(part, res))
  results["seconds"] = time.time() - t0
  os.makedirs(out, exist_ok=True)
  common.write_json(os.path.join(out, "dd_study.json"), results)
  write_markdown(results, out)
  logger.info("wrote %s (%.1f min)", out, results["seconds"] / 60)
  return results


STRATEGY_TEXT = {
    "raw": "the learned step sizes as they are",
    "rescaled": "the learned step sizes times the ratio of the largest empirical-NTK "
                "eigenvalues (distilled-for over trained network) on the synthetic images",
    "tuned": "one constant step size for the same number of steps, the best multiple of the "
             "learned mean on 1,000 training images (never the test set)",
}


def write_markdown(results: dict[str, Any], out: str) -> str:
  """Writes ``dd_study.md`` (settings, tables, figure links) beside the JSON; returns its path.

  Figure links are relative to ``benchmarks/`` when ``out`` lies under
  ``benchmarks/results`` (the file is pasted into ``benchmarks/RESULTS.md``), else to ``out``.
  """
  st = results["settings"]
  machine = results.get("machine", {})
  parts = dict(sorted(results["parts"].items(),  # toy first (the JSON sorts its keys)
                      key=lambda kv: ("toy", "fmnist").index(kv[0])
                      if kv[0] in ("toy", "fmnist") else 2))
  strategies = []
  for res in parts.values():
    for e in res["settings"].values():
      strategies = list(e["matrix"])
      break
  lines = [
      f"DD study ({'quick' if results.get('quick') else 'full'} setting, "
      f"{machine.get('device', '?')}, jax {machine.get('jax', '?')}, "
      f"{results['seconds'] / 60:.1f} min in all); every cell: mean ± std test accuracy (%) "
      f"over {st['restarts']} freshly initialised networks.",
      "",
      "Settings. DD with the reference defaults of `kip.baselines.dd` (xavier-normal "
      "initialisations drawn afresh every step, one synthetic batch per inner step cycled with "
      "i(k) = k mod s, 3 epochs, softplus step sizes from 0.02, Adam beta1 0.5 with ten halvings "
      "of its learning rate over the run). "
      f"Toy: two moons (noise {st['toy_noise']}), {st['toy_train']} train / {st['toy_test']} "
      f"test points, {st['toy_steps']} outer steps of 1,024 points. "
      f"Fashion-MNIST: a class-balanced subset of {st['fmnist_train']} training images (3x: "
      f"{st['fmnist_train'] // 3} synthetic images) tested on {st['fmnist_test']} test images, "
      f"{st['fmnist_steps']} outer steps of {st['fmnist_batch']} real images; 3x of all 60,000 "
      "(20,000 synthetic images) is out of this CPU's reach. Original data: the 'dc' recipe "
      f"(SGD momentum 0.9, lr 0.01 then 0.001, weight decay 5e-4) for {st['original_epochs']} "
      "epochs on the whole (sub)set. Step strategies for the network a set is trained on: " +
      "; ".join(f"`{k}`: {STRATEGY_TEXT.get(k, k)}" for k in strategies) + ".",
  ]
  for part, res in parts.items():
    lines += ["", tables(part, res)]
  figs = [f for res in parts.values() for f in res.get("figures", [])]
  if figs:
    base = out
    results_dir = os.path.abspath(common.RESULTS_DIR)
    if os.path.abspath(out).startswith(results_dir + os.sep):
      base = os.path.dirname(results_dir)
    links = [f"[{os.path.splitext(f)[0]}]({os.path.relpath(os.path.join(out, f), base)})"
             for f in figs]
    lines += ["", "Figures: " + ", ".join(links) + "."]
  path = os.path.join(out, "dd_study.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


if __name__ == "__main__":
  main()
