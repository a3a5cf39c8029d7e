"""``benchmarks/RESULTS.md``: one section per result file under ``benchmarks/results/``.

A suite's ``suite.json`` gives its table, caption, commands and distilled-image grids; any
other benchmark's JSON gives its ``table`` (or the ``.md`` beside it, or a generic table of its
``results``), the command (recorded, or rebuilt from its ``args``) and the machine.
"""

from __future__ import annotations

import glob
import logging
import os
import subprocess
import shlex
import time
from typing import Any, Mapping, Optional, Sequence

from benchmarks import common
from benchmarks.suite.config import BENCH_DIR
from benchmarks.suite.files import SUITE_KIND, read_json, rel

__all__ = ["RESULTS_MD", "README_MD", "README_BEGIN", "README_END", "collect_sections",
           "write_results_md", "readme_table", "update_readme"]

logger = logging.getLogger(__name__)

RESULTS_MD = os.path.join(BENCH_DIR, "RESULTS.md")
README_MD = os.path.join(os.path.dirname(BENCH_DIR), "README.md")
# The README's copy of the CPU tier's table sits between these two lines.
README_BEGIN = "<!-- cpu tier table: written by python -m benchmarks.run --write-results -->"
README_END = "<!-- end of cpu tier table -->"
# Columns of a suite table the README leaves out (RESULTS.md has them).
_README_DROP = ("finite protocol", "distil s", "eval s", "device")


def _args_command(module: str, args: Mapping[str, Any]) -> str:
  parts = ["python -m", module]
  for k, v in args.items():
    flag = "--" + k.replace("_", "-")
    if isinstance(v, bool):
      parts += [flag] if v else []
    elif isinstance(v, (list, tuple)):
      parts += [flag] + [shlex.quote(str(x)) for x in v]
    elif v is not None:
      if k == "out" or k == "json":
        v = rel(str(v), os.path.dirname(BENCH_DIR)) if os.path.isabs(str(v)) else v
      parts += [flag, shlex.quote(str(v))]
  return " ".join(parts)


def _machine_line(machine: Optional[Mapping[str, Any]], when: Optional[str]) -> str:
  if not machine:
    return f"machine not recorded{', ' + when if when else ''}"
  bits = [machine.get("device", "?")]
  if machine.get("cpu_count"):
    bits.append(f"{machine['cpu_count']} CPU cores")
  if machine.get("jax"):
    bits.append(f"jax {machine['jax']}")
  return ", ".join(bits) + f"; {machine.get('time_utc') or when or 'time not recorded'}"


def _committed_time(path: str) -> Optional[float]:
  """The time of the last commit of ``path`` when it is tracked and unchanged, else None."""
  try:
    d = os.path.dirname(os.path.abspath(path))
    changed = subprocess.run(["git", "status", "--porcelain", "--", path], cwd=d,
                             capture_output=True, text=True, timeout=10)
    stamp = subprocess.run(["git", "log", "-1", "--format=%ct", "--", path], cwd=d,
                           capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  if changed.returncode or stamp.returncode or changed.stdout.strip() or not stamp.stdout.strip():
    return None
  return float(stamp.stdout.strip())


def _written(path: str, machine: Optional[Mapping[str, Any]]) -> str:
  """When a result file was written: the time its machine record holds, else (a git checkout
  resets file times) the time of its last commit when it is tracked and unchanged, else the
  file's modification time."""
  if machine and machine.get("time_utc"):
    return str(machine["time_utc"])
  stamp = _committed_time(path)
  if stamp is None:
    stamp = os.path.getmtime(path)
  return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(stamp))


def _pngs(directory: str, start: str, exclude: Sequence[str] = ()) -> list[str]:
  return [f"[{os.path.basename(p)}]({rel(p, start)})"
          for p in sorted(glob.glob(os.path.join(directory, "*.png"))) if p not in exclude]


def _render_generic(data: Mapping[str, Any]) -> Optional[str]:
  """A table for result JSON without a ``table``: a ``results`` list of flat dicts, or scalars."""
  rows = data.get("results")
  if isinstance(rows, list) and rows and all(isinstance(r, Mapping) for r in rows):
    cols = [k for k in rows[0] if all(not isinstance(r.get(k), (dict, list)) for r in rows)]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    return common.markdown_table(cols, [[fmt(r.get(c, "")) for c in cols] for r in rows])
  scalars = {k: v for k, v in data.items() if isinstance(v, (int, float, str)) and k != "kind"}
  if scalars:
    return common.markdown_table(["key", "value"], sorted(scalars.items()))
  return None


def _throughput_section(data: Mapping[str, Any]) -> str:
  rows = []
  for key in ("ours", "reference"):
    r = data.get(key)
    if r:
      rows.append([r.get("impl", key), r.get("jax", "?"), f"{r.get('fwd_pairs_per_s', 0):.1f}",
                   f"{r.get('grad_pairs_per_s', 0):.1f}", f"{r.get('peak_rss_mb', 0):.0f}"])
  table = common.markdown_table(["implementation", "jax", "fwd pairs/s", "fwd+grad pairs/s",
                                 "peak RSS MB"], rows)
  extra = []
  if "fwd_ratio" in data:
    extra.append(f"Speed-up vs neural-tangents: forward {data['fwd_ratio']:.2f}x, "
                 f"forward+gradient {data['grad_ratio']:.2f}x; max relative kernel difference "
                 f"{data.get('max_rel_diff', float('nan')):.1e}.")
  mem = data.get("memory")
  if mem and "grad_temp_bytes" in mem:
    extra.append(f"Gradient of a {mem.get('n1')} x {mem.get('n2')} block: XLA temporaries "
                 f"{mem['grad_temp_bytes'] / 2**30:.2f} GB.")
  return table + ("\n\n" + " ".join(extra) if extra else "")


_ORDER = ("ceilings_cpu", "suite_cpu", "suite_cpu_fc_grid", "suite_gpu", "baselines_cpu", "kip_cpu",
          "transfer_cpu", "cross_arch", "compression_sweep", "poisoning_cpu", "kernel_throughput")


def _section_key(path: str) -> tuple[int, str]:
  stem = os.path.splitext(os.path.basename(path))[0]
  parent = os.path.basename(os.path.dirname(path))
  for i, name in enumerate(_ORDER):
    if name in (stem, parent):
      return i, path
  return len(_ORDER), path


def collect_sections(results_dir: str, start: str) -> list[str]:
  """One Markdown section per result file under ``results_dir`` (links relative to ``start``)."""
  skip_dirs = {"cells", "distilled", "checkpoints"}
  paths = []
  for root, dirs, files in os.walk(results_dir):
    dirs[:] = sorted(d for d in dirs if d not in skip_dirs and not d.startswith("."))
    jsons = sorted(f for f in files
                   if f.endswith(".json") and not f.endswith(".npz.json") and not f.startswith("."))
    # A benchmark's own folder (X/X.json or a suite's suite.json): its summary only, not the
    # per-cell files beside it.
    for summary in (os.path.basename(root) + ".json", "suite.json"):
      if root != results_dir and summary in jsons:
        jsons = [summary]
        break
    paths += [os.path.join(root, f) for f in jsons]
  sections = []
  for path in sorted(paths, key=_section_key):
    data = read_json(path)
    if not isinstance(data, Mapping):
      continue
    directory = os.path.dirname(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    source = rel(path, start)
    if data.get("kind") == SUITE_KIND:
      cmds = data.get("commands") or [data.get("command") or "?"]
      first, last = (data.get("finished") or [None, None])
      when = (f"cells finished {first} to {last}" if first and first != last
              else f"cells finished {first}" if first else "no cell finished yet")
      grids = [f"[{c['method']} IPC {c['ipc']}]"
               f"({rel(os.path.join(directory, c['grid']), start)})"
               for c in data.get("cells", [])]
      body = [f"## {data.get('title', data.get('name'))}", "",
              "Command: " + ", ".join(f"`{c}`" for c in cmds) +
              f". Machine: {', '.join(data.get('devices', [])) or '?'}; {when}; compute "
              f"{data.get('total_seconds', 0) / 60:.1f} min in all (sum of cell wall times). "
              f"Source: [{source}]({source}).", "", data.get("caption", ""), "",
              data.get("table", "")]
      if grids:
        body += ["", "Distilled images: " + ", ".join(grids) + "."]
      sections.append("\n".join(body))
      continue
    md_path = os.path.join(directory, stem + ".md")
    if "table" in data and isinstance(data["table"], str):
      table = data["table"]
    elif os.path.exists(md_path):
      with open(md_path) as f:
        table = f.read().strip()
    elif stem == "kernel_throughput":
      table = _throughput_section(data)
    else:
      table = _render_generic(data)
    if not table:
      continue
    machine = data.get("machine") if isinstance(data.get("machine"), Mapping) else None
    if machine is None and isinstance(data.get("ours"), Mapping):
      machine = {"device": data["ours"].get("device"), "jax": data["ours"].get("jax")}
    if "command" in data:
      command = data["command"]
    elif isinstance(data.get("args"), Mapping):
      module = data.get("module") or "benchmarks." + (
          os.path.basename(directory) if stem == os.path.basename(directory) else stem)
      command = _args_command(module, data["args"])
    else:
      command = f"python -m benchmarks.{stem}"
    title = data.get("title") or stem.replace("_", " ")
    body = [f"## {title}", "",
            f"Command: `{command}`. Machine: {_machine_line(machine, None)} (file written "
            f"{_written(path, machine)}). Source: [{source}]({source}).", ""]
    if data.get("caption"):
      body += [data["caption"], ""]
    body.append(table)
    own_png = os.path.join(directory, stem + ".png")
    if os.path.exists(own_png):
      body += ["", f"![{stem}]({rel(own_png, start)})"]
    if stem == os.path.basename(directory):  # a benchmark's own folder: link its grids
      pngs = _pngs(directory, start, exclude=[own_png])
      if pngs:
        body += ["", "Distilled images: " + ", ".join(pngs) + "."]
    sections.append("\n".join(body))
  return sections


PROTOCOLS = """## Protocols

Each finite-network figure is produced by one of these protocols (`kip.transfer`); a section
names which, and any deviation from it.

- **DC protocol** (`recipe="dc"`, the DatasetCondensation evaluation): the DC ConvNet-3 (width
  128, instance norm, average pooling; 28x28 grey input padded to 32x32 as the reference), or
  the network named; softmax cross-entropy on `one_hot(argmax(labels))`; SGD momentum 0.9, lr
  0.01 dropped 10x at half the run, coupled L2 5e-4, batch 256, 300 epochs of the support set;
  no augmentation (`recipe="dsa"`: DSA augmentation, 1,000 epochs); mean +- population std over
  the stated restarts, each a fresh initialisation.
- **KIP protocol** (`recipe="kip"`, the KIP transfer notebook's optimisation): MSE on centred
  labels (plain one-hot rows shifted by -1/K, learned labels as given); SGD momentum 0.9, batch
  100, 5,000 steps, cosine decay, L2 1e-3, and a fixed lr 0.01 unless the section says `tune`:
  then the lr is a factor times the network's NTK rule (`2mK / lambda_max` of its empirical NTK
  at init) and the factor and L2 are chosen on the last 5,000 training images, never the test
  set (the search runs are as long as the final ones unless the section gives their length).
- **Whole-data ceiling** (`benchmarks.ceilings`): the network trained on the training set minus
  the last 5,000 images, lr chosen on those 5,000 with short runs; softmax cross-entropy, SGD
  momentum 0.9, batch 256, cosine decay, L2 5e-4, one network, tested once.
- **KRR**: kernel ridge regression from the support set with the stated kernel, ridge
  `reg * tr(K_ss)/n` (reg 1e-6 unless stated), on all 10,000 test images.

Sections measured before 2026-12-02 used the earlier label rule (labels as given; softmax of
learned labels for cross-entropy) and a fixed lr; they say so where it matters."""


def readme_table(suite: Mapping[str, Any]) -> str:
  """A suite's table for the README: without the protocol, time and device columns, with a
  line naming its commands and the cells still to run."""
  lines = [line for line in suite.get("table", "").splitlines() if line.startswith("|")]
  if not lines:
    return "No cell finished yet."
  header = [c.strip() for c in lines[0].strip("|").split("|")]
  keep = [i for i, c in enumerate(header) if c not in _README_DROP]
  rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
  table = common.markdown_table([header[i] for i in keep], [[r[i] for i in keep] for r in rows])
  pending = suite.get("pending") or []
  note = (f"`{'`, `'.join(suite.get('commands') or ['?'])}`, "
          f"{', '.join(suite.get('devices') or ['?'])}, cells finished "
          f"{' to '.join(x for x in suite.get('finished') or [] if x) or '-'}"
          + (f"; not yet run: {', '.join(pending)}" if pending else "")
          + ". Protocols and settings: benchmarks/RESULTS.md.")
  return table + "\n\n" + note


def update_readme(results_dir: str = common.RESULTS_DIR, path: Optional[str] = None,
                  suite_name: str = "suite_cpu") -> bool:
  """Replaces the README's block between :data:`README_BEGIN` and :data:`README_END` with
  :func:`readme_table` of ``results_dir/suite_name/suite.json``; ``False`` (and nothing
  written) when either is missing."""
  path = path or README_MD
  suite = read_json(os.path.join(results_dir, suite_name, "suite.json"))
  if not os.path.exists(path) or not isinstance(suite, Mapping):
    return False
  with open(path) as f:
    text = f.read()
  if README_BEGIN not in text or README_END not in text.split(README_BEGIN, 1)[1]:
    return False
  head, rest = text.split(README_BEGIN, 1)
  tail = rest.split(README_END, 1)[1]
  new = head + README_BEGIN + "\n" + readme_table(suite) + "\n" + README_END + tail
  if new != text:
    from kip._src.io import atomic_write
    with atomic_write(path, "w") as f:
      f.write(new)
  return True


def write_results_md(results_dir: str = common.RESULTS_DIR,
                     path: Optional[str] = None, readme: Optional[str] = None) -> str:
  """Assembles ``benchmarks/RESULTS.md`` from the result files under ``results_dir``.

  With ``readme`` (a path), also refreshes that file's CPU-tier table
  (:func:`update_readme`); the runner passes the project README when it writes the real
  RESULTS.md.
  """
  if readme is not None:
    update_readme(results_dir, readme)
  path = path or RESULTS_MD
  start = os.path.dirname(os.path.abspath(path))
  sections = collect_sections(results_dir, start) if os.path.isdir(results_dir) else []
  text = "\n\n".join([
      "# Benchmark results",
      "Generated by `python -m benchmarks.run --write-results` on "
      f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from the files under "
      f"`{rel(results_dir, os.path.dirname(BENCH_DIR))}/`; do not edit by hand. Published "
      "numbers are those of the project's ANCHORS.md, as held in `benchmarks/common.py` "
      "(Fashion-MNIST; '(?)': secondary source, not yet confirmed against the paper). "
      "Every section names the command and machine that produced it.",
      PROTOCOLS,
      *(sections or ["No results yet: run `python -m benchmarks.run --tier cpu`."])]) + "\n"
  from kip._src.io import atomic_write
  with atomic_write(path, "w") as f:
    f.write(text)
  logger.info("wrote %s (%d sections)", path, len(sections))
  return text
