"""Runs that never lose work (issue 16): run folders, fingerprints, divergence, CLI errors.

Driver mechanics use a fake algorithm (host-side steps, nothing to compile); the CLI cases run
the real ``kip distill`` on scikit-learn's digits with the FC kernel, 10 images, a few steps.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kip
from kip import cli
from kip._src import driver
from kip._src import io as kio
from kip._src.algorithm import Algorithm
from kip._src.distilled import DistilledSet
from kip._src.methods import kip as kip_method

BASE = ["distill", "--dataset", "digits", "--support-size", "10", "--steps", "4",
        "--target-batch-size", "100", "--eval-every", "0", "--checkpoint-every", "1"]
HINT = "lower the fake rate"


# ----------------------------------------------------------------------------- helpers
def _main(argv):
  """``kip.cli.main(argv)`` in-process: ``(exit code, stdout, stderr)``; logging restored."""
  root = logging.getLogger()
  saved = root.handlers[:], root.level
  kip_level = logging.getLogger("kip").level
  noisy = {n: logging.getLogger(n).level for n in ("jax", "absl", "matplotlib", "PIL")}
  out, err = io.StringIO(), io.StringIO()
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      try:
        code = cli.main([str(a) for a in argv])
      except SystemExit as e:  # argparse errors, --version, --help
        code = e.code
  finally:
    for h in root.handlers:
      if h not in saved[0]:
        h.close()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.getLogger("kip").setLevel(kip_level)
    for n, level in noisy.items():
      logging.getLogger(n).setLevel(level)
  return code, out.getvalue(), err.getvalue()


def _error_line(err: str) -> str:
  """The CLI's own error line (stderr also carries the log lines)."""
  lines = [line for line in err.splitlines() if line.startswith("kip: ")]
  assert len(lines) == 1, err
  return lines[0]


def _ckpt(path):
  return kio.load_npz(path, kind="checkpoint")


def _snapshot(folder):
  return {p: (folder / p).read_bytes() for p in sorted(os.listdir(folder))
          if (folder / p).is_file()}


class FakeState(NamedTuple):
  x: jax.Array
  count: jax.Array


def fake_algorithm(loss=lambda step: 1.0, nan_state_at=None, sleep=0.0, watch_loss=True):
  """An :class:`Algorithm` whose step (on the host) moves ``x`` by key-drawn noise.

  Step ``n`` (1-based) reports ``loss(n)``; from step ``nan_state_at`` on, ``x`` is NaN while
  the reported loss stays whatever ``loss`` says.
  """
  def init(key, dataset):
    x, _ = kip_method.init_support(key, dataset, 1)
    return FakeState(x, jnp.zeros((), jnp.int32))

  def step(state, data, key):
    if sleep:
      time.sleep(sleep)
    n = int(state.count) + 1
    x = state.x + 0.01 * jax.random.normal(key, state.x.shape)
    if nan_state_at is not None and n >= nan_state_at:
      x = x * jnp.nan
    return FakeState(x, state.count + 1), {"loss": jnp.float32(loss(n))}

  def result(state, dataset):
    return DistilledSet(images=np.asarray(state.x), labels=np.eye(10, dtype=np.float32),
                        dataset=dataset.name, method="fake",
                        preprocessing=dataset.preprocessing)

  return Algorithm("fake", init, lambda dataset: None, step, result,
                   {"config": {"steps": 10, "rate": 1.0}}, 10, HINT, watch_loss=watch_loss)


def _fake_factory(monkeypatch, **kwargs):
  """``kip distill --method kip`` builds the fake algorithm instead of KIP."""
  monkeypatch.setattr(kip_method, "make_kip", lambda config, **unused: fake_algorithm(**kwargs))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished ``kip distill`` run folder (4 steps, a checkpoint after every step)."""
  out = tmp_path_factory.mktemp("finished") / "run"
  code, stdout, err = _main(BASE + ["--out", out])
  assert code == 0, err
  return out, stdout, err


@pytest.fixture
def run_copy(finished, tmp_path):
  out = tmp_path / "run"
  shutil.copytree(finished[0], out)
  return out


# ----------------------------------------------------------------------------- run folders
def test_second_run_into_same_out_is_refused(run_copy):
  before = _snapshot(run_copy)
  code, stdout, err = _main(BASE + ["--out", run_copy])
  assert code == 2 and stdout == ""
  line = _error_line(err)
  assert line == (f"kip: error: {run_copy} already holds a run (distilled.npz, "
                  "distilled.npz.json, distilled.png, summary.json, checkpoint.npz, "
                  "checkpoint.prev.npz); add --resume to continue it or --overwrite to replace "
                  f"it (the old files are moved to {run_copy}/previous-<time>/), or choose "
                  "another --out.")
  assert _snapshot(run_copy) == before  # nothing overwritten, kip.log not appended


def test_other_method_into_a_kip_folder_is_refused(run_copy):
  """The issue's ``--mode ls`` into a KIP folder (which left the old checkpoint beside it)."""
  before = _snapshot(run_copy)
  code, _, err = _main(["distill", "--dataset", "digits", "--mode", "ls", "--out", run_copy])
  assert code == 2 and "--resume" in err and "--overwrite" in err
  assert _snapshot(run_copy) == before


def test_overwrite_moves_old_files_aside(run_copy):
  before = _snapshot(run_copy)
  code, _, err = _main(BASE[:6] + ["2"] + BASE[7:] + ["--out", run_copy, "--overwrite",
                                                       "--no-progress"])
  assert code == 0, err
  [aside] = [p for p in os.listdir(run_copy) if p.startswith("previous-")]
  assert re.fullmatch(r"previous-\d{8}-\d{6}", aside)
  assert _snapshot(run_copy / aside) == before  # every old file, unchanged
  assert json.loads((run_copy / "summary.json").read_text())["steps"] == 2
  assert _ckpt(run_copy / "checkpoint.npz")[1]["count"] == 2
  assert _ckpt(run_copy / "checkpoint.prev.npz")[1]["count"] == 1  # not the old run's
  log = (run_copy / "kip.log").read_text()
  assert f"--overwrite: moved the previous run's files to {run_copy / aside}" in log
  assert log.count("command: kip distill") == 1  # a fresh log; the old one is aside


def test_out_is_a_file(tmp_path):
  path = tmp_path / "file.txt"
  path.write_text("keep me")
  code, _, err = _main(BASE + ["--out", path])
  assert code == 2
  assert _error_line(err) == f"kip: error: --out {path} is a file, not a folder; give a " \
                             "folder path."
  assert path.read_text() == "keep me"


def test_read_only_out_monkeypatched(tmp_path, monkeypatch):
  """As root, chmod does not stop writes; os.access stands in for a read-only folder."""
  out = tmp_path / "ro"
  out.mkdir()
  real_access = os.access
  monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.fspath(p) == str(out)
                      else real_access(p, mode, **kw))
  code, _, err = _main(BASE + ["--out", out])
  assert code == 1 and "Traceback" not in err
  assert _error_line(err) == f"kip: error: --out {out} is not writable; choose another folder."
  assert os.listdir(out) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root ignores file permissions (see the os.access test above)")
def test_read_only_out_chmod(tmp_path):
  parent = tmp_path / "ro"
  parent.mkdir()
  (parent / "existing").mkdir()
  parent.chmod(0o555)
  (parent / "existing").chmod(0o555)
  try:
    for out in (parent / "existing", parent / "new"):
      code, _, err = _main(BASE + ["--out", out])
      assert code == 1 and "Traceback" not in err
      assert "not writable" in err or "Permission denied" in err
  finally:
    (parent / "existing").chmod(0o755)
    parent.chmod(0o755)


def test_show_run_folder(run_copy, tmp_path):
  (run_copy / "distilled.png").unlink()
  code, stdout, err = _main(["show", f"{run_copy}{os.sep}"])
  assert code == 0, err
  assert stdout.strip() == str(run_copy / "distilled.png")
  assert (run_copy / "distilled.png").read_bytes()[:4] == b"\x89PNG"
  # --out a folder (trailing slash, not there yet)
  code, stdout, err = _main(["show", run_copy / "distilled.npz", "--out",
                             f"{tmp_path / 'grids'}{os.sep}"])
  assert code == 0, err
  assert stdout.strip() == str(tmp_path / "grids" / "distilled.png")
  # a folder without a set: one line, exit 1 (a missing file)
  empty = tmp_path / "empty"
  empty.mkdir()
  code, _, err = _main(["show", f"{empty}{os.sep}"])
  assert code == 1 and "Traceback" not in err
  assert _error_line(err) == (f"kip: error: {empty / 'distilled.npz'} does not exist; give a "
                              "distilled .npz or a run folder holding distilled.npz.")


# ----------------------------------------------------------------------------- fingerprints
KIP_CONFIG = kip_method.KIPConfig(images_per_class=1, target_batch_size=50, steps=4,
                                  learning_rate=0.02)


@pytest.fixture(scope="module")
def kip_alg():
  """One KIP algorithm (one compiled step) shared by the driver-level KIP tests."""
  return kip_method.make_kip(KIP_CONFIG, kip.kernels.fc(1))


@pytest.fixture(scope="module")
def checkpointed(kip_alg, digits_small, tmp_path_factory):
  """``(result, folder)`` of a 4-step KIP run checkpointed after every step."""
  d = tmp_path_factory.mktemp("checkpointed")
  out = driver.run(kip_alg, digits_small, 4, key=0, checkpoint_dir=d, checkpoint_every=1,
                   progress=False)
  return out, d


@pytest.fixture
def ckpt_copy(checkpointed, tmp_path):
  shutil.copytree(checkpointed[1], tmp_path / "c")
  return tmp_path / "c"


@pytest.mark.parametrize("field,change,named", [
    ("seed", {"key": 1}, "seed: checkpoint 0 vs this run 1"),
    ("lr", {"config": {"learning_rate": 0.05}},
     "spec.config.learning_rate: checkpoint 0.02 vs this run 0.05"),
    ("depth", {"kernel": 2}, "spec.kernel.depth: checkpoint 1 vs this run 2"),
    ("reg", {"config": {"reg": 1e-3}}, "spec.config.reg: checkpoint 1e-06 vs this run 0.001"),
    ("preprocessing", {"data": {"preprocess": "none"}},
     'preprocessing.kind: checkpoint "standardize" vs this run "none"'),
    ("data", {"data": {"n_train": 100}},
     "data.train_shape: checkpoint [200, 8, 8, 1] vs this run [100, 8, 8, 1]"),
    ("support size", {"config": {"images_per_class": 2}},  # another state structure
     "spec.config.images_per_class: checkpoint 1 vs this run 2"),
    ("learn_labels", {"config": {"learn_labels": False}},  # labels move out of params
     "spec.config.learn_labels: checkpoint true vs this run false"),
])
def test_fingerprint_mismatch_names_the_field(kip_alg, digits_small, ckpt_copy, field, change,
                                              named):
  alg, ds = kip_alg, digits_small
  if "config" in change or "kernel" in change:
    config = KIP_CONFIG.__class__(**{**KIP_CONFIG.to_dict(), **change.get("config", {})})
    alg = kip_method.make_kip(config, kip.kernels.fc(change.get("kernel", 1)))
  if "data" in change:
    ds = kip.data.load("digits", **{"n_train": 200, "n_test": 100, **change["data"]})
  before = _snapshot(ckpt_copy)
  with pytest.raises(ValueError) as err:
    driver.run(alg, ds, 4, key=change.get("key", 0), checkpoint_dir=ckpt_copy, resume=True,
               progress=False)
  message = str(err.value)
  assert message.startswith(f"the checkpoint in {ckpt_copy} was written by a different run: ")
  assert named in message
  assert message.endswith("Resume with the same settings, or start fresh with overwrite=True "
                          "(CLI: --overwrite).")
  if field == "data":
    assert "data.sha1" in message
  assert _snapshot(ckpt_copy) == before


@pytest.mark.parametrize("extra,named", [
    (["--preprocess", "none"], 'preprocessing.kind: checkpoint "standardize" vs this run "none"'),
    (["--lr", "0.05"], "spec.config.learning_rate: checkpoint 0.01 vs this run 0.05"),
    (["--seed", "3"], "seed: checkpoint 0 vs this run 3"),
])
def test_cli_resume_with_other_settings_exit_2(run_copy, extra, named):
  """The issue's case: resuming a standardize run with --preprocess none exited 0 at 25 %."""
  code, _, err = _main(BASE + extra + ["--out", run_copy, "--resume"])
  assert code == 2 and "Traceback" not in err
  line = _error_line(err)
  assert line.startswith(f"kip: error: the checkpoint in {run_copy} was written by a "
                         "different run: ") and named in line


def test_fewer_steps_than_the_checkpoint(kip_alg, digits_small, ckpt_copy, run_copy):
  with pytest.raises(ValueError) as err:
    driver.run(kip_alg, digits_small, 2, key=0, checkpoint_dir=ckpt_copy, resume=True,
               progress=False)
  assert str(err.value) == (f"the checkpoint in {ckpt_copy} holds 4 steps, more than steps=2; "
                            "ask for steps >= 4, or start fresh with overwrite=True (CLI: "
                            "--overwrite).")
  code, _, err = _main(BASE[:6] + ["2"] + BASE[7:] + ["--out", run_copy, "--resume"])
  assert code == 2
  assert "holds 4 steps, more than steps=2; ask for steps >= 4" in _error_line(err)


def test_resume_of_a_finished_run_runs_nothing(kip_alg, digits_small, checkpointed, ckpt_copy):
  want, _ = checkpointed
  got = driver.run(kip_alg, digits_small, 4, key=0, checkpoint_dir=ckpt_copy, resume=True,
                   progress=False)
  assert got.metadata["steps_this_run"] == 0 and got.metadata["steps"] == 4
  np.testing.assert_array_equal(got.images, want.images)


def test_run_folder_error_without_resume_or_overwrite(kip_alg, digits_small, ckpt_copy):
  before = _snapshot(ckpt_copy)
  with pytest.raises(driver.RunFolderError, match=r"already holds a checkpoint of another run; "
                     r"resume it with resume=True \(CLI: --resume\) or replace it with "
                     r"overwrite=True \(CLI: --overwrite\)"):
    driver.run(kip_alg, digits_small, 4, key=0, checkpoint_dir=ckpt_copy, progress=False)
  assert _snapshot(ckpt_copy) == before


# ----------------------------------------------------------------------------- corrupt checkpoint
@pytest.mark.parametrize("damage", ["truncated", "bit_flip", "empty"])
def test_corrupt_newest_falls_back_to_previous(kip_alg, digits_small, checkpointed, ckpt_copy,
                                               caplog, damage):
  want, _ = checkpointed
  newest = ckpt_copy / "checkpoint.npz"
  data = bytearray(newest.read_bytes())
  if damage == "truncated":
    data = data[: len(data) // 2]
  elif damage == "bit_flip":  # inside a leaf's bytes: the zip's CRC check fails
    data[len(data) // 3] ^= 0xFF
  else:
    data = b""
  newest.write_bytes(bytes(data))
  assert _ckpt(ckpt_copy / "checkpoint.prev.npz")[1]["count"] == 3
  with caplog.at_level(logging.WARNING, logger="kip._src.driver"):
    got = driver.run(kip_alg, digits_small, 4, key=0, checkpoint_dir=ckpt_copy, resume=True,
                     progress=False)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any(m.startswith(f"checkpoint {newest} is unreadable (") and
             m.endswith("it may be truncated or corrupt.); trying the previous one")
             for m in warnings), warnings
  assert f"resuming from the previous checkpoint {ckpt_copy / 'checkpoint.prev.npz'}" in warnings
  assert got.metadata["steps_this_run"] == 1  # step 4 again, from step 3
  np.testing.assert_array_equal(got.images, want.images)
  np.testing.assert_array_equal(got.labels, want.labels)
  assert got.metadata["history"]["loss"] == want.metadata["history"]["loss"]
  assert _ckpt(newest)[1]["count"] == 4


def test_both_checkpoints_corrupt(kip_alg, digits_small, ckpt_copy):
  for name in ("checkpoint.npz", "checkpoint.prev.npz"):
    (ckpt_copy / name).write_bytes(b"junk")
  with pytest.raises(ValueError, match=r"^no readable checkpoint: .*checkpoint\.npz.*; .*"
                     r"checkpoint\.prev\.npz.*Start fresh with overwrite=True \(CLI: "
                     r"--overwrite\)\.$"):
    driver.run(kip_alg, digits_small, 4, key=0, checkpoint_dir=ckpt_copy, resume=True,
               progress=False)


# ----------------------------------------------------------------------------- divergence
def _finite_checkpoint(folder, count):
  state, meta = _ckpt(folder / "checkpoint.npz")
  assert meta["count"] == count
  assert all(np.isfinite(a).all() for a in state.values() if a.dtype.kind == "f")


def test_rising_loss_stops_the_run(digits_small, tmp_path, caplog):
  """The issue's ``--lr 1e8`` case: the loss rose 0.30 -> 1.08 and the run exited 0."""
  alg = fake_algorithm(loss=lambda n: 1.5 ** n)
  with caplog.at_level(logging.ERROR, logger="kip._src.driver"):
    with pytest.raises(driver.DivergenceError) as err:
      driver.run(alg, digits_small, 100, key=0, checkpoint_dir=tmp_path, checkpoint_every=1,
                 progress=False)
  # 1.5 ** n exceeds 3 x 1.5 from step 4 on; the 20th check in a row is step 23.
  assert str(err.value) == (f"fake: the loss rose to {1.5 ** 23:.6g} at step 23, above 3 x its "
                            f"minimum 1.5 for 20 checks in a row; {HINT}.")
  assert isinstance(err.value, FloatingPointError)
  assert str(err.value) in caplog.text  # logged (into kip.log under the CLI)
  _finite_checkpoint(tmp_path, 22)  # the last checked state; the diverging one is not saved


def test_short_spike_or_unwatched_loss_is_not_divergence(digits_small):
  spike = fake_algorithm(loss=lambda n: 10.0 if 5 <= n < 20 else 1.0)  # 15 < patience 20
  assert driver.run(spike, digits_small, 30, key=0, progress=False).metadata["steps"] == 30
  rising = fake_algorithm(loss=lambda n: 1.5 ** n, watch_loss=False)
  assert driver.run(rising, digits_small, 30, key=0, progress=False).metadata["steps"] == 30
  off = driver.Divergence(factor=None)
  assert driver.run(fake_algorithm(loss=lambda n: 1.5 ** n), digits_small, 30, key=0,
                    progress=False, divergence=off).metadata["steps"] == 30
  tight = driver.Divergence(factor=2.0, patience=2)
  with pytest.raises(driver.DivergenceError, match=r"at step 4, above 2 x its minimum 1\.5 for "
                     r"2 checks in a row"):
    driver.run(fake_algorithm(loss=lambda n: 1.5 ** n), digits_small, 30, key=0,
               progress=False, divergence=tight)


def test_nan_loss_keeps_the_last_good_checkpoint(digits_small, tmp_path):
  alg = fake_algorithm(loss=lambda n: np.nan if n >= 5 else 1.0)
  with pytest.raises(driver.DivergenceError) as err:
    driver.run(alg, digits_small, 10, key=0, checkpoint_dir=tmp_path, checkpoint_every=1,
               progress=False)
  assert str(err.value) == f"fake: the loss became nan at step 5 (last finite 1.0); {HINT}."
  _finite_checkpoint(tmp_path, 4)
  assert _ckpt(tmp_path / "checkpoint.prev.npz")[1]["count"] == 3


@pytest.mark.parametrize("every,last_good", [(1, 4), (3, 3), (0, None)])
def test_non_finite_state_is_never_checkpointed(digits_small, tmp_path, every, last_good):
  """The state turns NaN at step 5 while its reported loss is still finite."""
  alg = fake_algorithm(nan_state_at=5)
  with pytest.raises(driver.DivergenceError) as err:
    driver.run(alg, digits_small, 10, key=0, checkpoint_dir=tmp_path, checkpoint_every=every,
               progress=False)
  failed_at = {1: 5, 3: 6, 0: 10}[every]
  assert str(err.value) == (f"fake: the state became non-finite by step {failed_at}; {HINT}. "
                            "The last good checkpoint is kept.")
  if last_good is None:
    assert not (tmp_path / "checkpoint.npz").exists()
  else:
    _finite_checkpoint(tmp_path, last_good)


def test_cli_divergence_is_one_line_exit_1(tmp_path, monkeypatch):
  _fake_factory(monkeypatch, loss=lambda n: np.nan if n >= 3 else 1.0)
  out = tmp_path / "out"
  code, stdout, err = _main(BASE + ["--out", out])
  assert code == 1 and stdout == "" and "Traceback" not in err
  message = f"fake: the loss became nan at step 3 (last finite 1.0); {HINT}."
  assert _error_line(err) == f"kip: error: {message}"
  assert message in (out / "kip.log").read_text()
  _finite_checkpoint(out, 2)
  assert not (out / "distilled.npz").exists()
  with pytest.raises(driver.DivergenceError, match="loss became nan at step 3"):
    _main(BASE + ["--out", tmp_path / "debug", "--debug"])  # --debug: the exception itself


def test_debug_shows_a_traceback(tmp_path):
  missing = tmp_path / "missing.npz"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  plain = subprocess.run([sys.executable, "-m", "kip.cli", "show", str(missing)], env=env,
                         capture_output=True, text=True, timeout=120)
  assert plain.returncode == 1
  assert plain.stderr.strip().splitlines()[-1] == (
      f"kip: error: {missing} does not exist; give a distilled .npz or a run folder holding "
      "distilled.npz.")
  assert "Traceback" not in plain.stderr
  debug = subprocess.run([sys.executable, "-m", "kip.cli", "show", str(missing), "--debug"],
                         env=env, capture_output=True, text=True, timeout=120)
  assert debug.returncode == 1
  assert "Traceback (most recent call last)" in debug.stderr and "FileNotFoundError" in debug.stderr


# ----------------------------------------------------------------------------- CLI surface
def test_version():
  code, stdout, _ = _main(["--version"])
  assert code == 0
  assert stdout.strip() == f"kip {importlib.metadata.version('kip')}"


def _subparser(name):
  parser = cli.build_parser()
  [sub] = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
  return sub.choices[name]


@pytest.mark.parametrize("command", ["distill", "evaluate", "show"])
def test_every_option_has_help_with_its_default(command):
  parser = _subparser(command)
  formatter = parser._get_formatter()
  options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
  assert len(options) > (20 if command == "distill" else 2)
  for action in options:
    assert action.help and action.help.strip(), action.option_strings
    text = formatter._expand_help(action)
    assert "default" in text, (action.option_strings, text)
  code, stdout, _ = _main([command, "--help"])
  assert code == 0 and stdout.count("(default:") >= len(options) - 1  # --out is required


# ----------------------------------------------------------------------------- summary and log
def test_summary_fields(finished, digits):
  out, stdout, _ = finished
  summary = json.loads((out / "summary.json").read_text())
  assert summary["method"] == "kip" and summary["dataset"] == "digits"
  assert summary["config"] == kip_method.KIPConfig(images_per_class=1, steps=4,
                                                   target_batch_size=100).to_dict()
  assert summary["preprocessing"] == {"kind": "standardize", "zca_reg": 0.1}
  assert (summary["steps"], summary["requested_steps"], summary["seed"]) == (4, 4, 0)
  assert summary["stopped_early"] is False and summary["seconds"] > 0
  assert summary["data_fingerprint"] == driver.dataset_fingerprint(digits)
  assert {"kip", "jax", "optax"} <= set(summary["versions"])
  printed = json.loads(stdout.strip().splitlines()[-1])
  assert printed == {k: v for k, v in summary.items() if k not in ("versions", "config")}


def test_log_header(finished):
  out, _, _ = finished
  lines = (out / "kip.log").read_text().splitlines()
  assert lines[0].endswith("INFO kip.cli: " + "=" * 20 + " kip kip run " + "=" * 20)
  assert lines[1].endswith("INFO kip.cli: command: kip " + " ".join(BASE) + f" --out {out}")
  assert "versions: {" in lines[2]
  config = [i for i, line in enumerate(lines) if "kip.cli: config: KIPConfig {" in line]
  first_step = [i for i, line in enumerate(lines) if "step 1/4" in line or "step 4/4" in line]
  assert config and (not first_step or config[0] < first_step[0])


def test_non_tty_progress_is_a_few_lines(finished, digits_small, caplog):
  _, _, err = finished  # the CLI run logged its progress to a non-terminal stderr
  assert 1 <= len(re.findall(r"kip: step \d+/4", err)) <= 2
  alg = fake_algorithm()
  with caplog.at_level(logging.INFO, logger="kip._src.driver"):
    with contextlib.redirect_stderr(io.StringIO()):
      t0 = time.time()
      driver.run(alg, digits_small, 300, key=0, progress=True, log_interval=0.2)
      elapsed = time.time() - t0
  lines = [m for m in (r.getMessage() for r in caplog.records)
           if re.match(r"fake: step \d+/300", m)]
  assert lines and lines[-1].startswith("fake: step 300/300 loss=1")
  assert len(lines) <= elapsed / 0.2 + 2  # one per interval, not one per step


def test_time_budget_stops_cleanly(digits_small, tmp_path):
  alg = fake_algorithm(sleep=0.02)
  want = driver.run(alg, digits_small, 40, key=0, progress=False)
  got = driver.run(alg, digits_small, 40, key=0, checkpoint_dir=tmp_path, time_budget=0.1,
                   progress=False)
  done = got.metadata["steps"]
  assert got.metadata["stopped_early"] is True and 1 <= done < 40
  assert _ckpt(tmp_path / "checkpoint.npz")[1]["count"] == done
  rest = driver.run(alg, digits_small, 40, key=0, checkpoint_dir=tmp_path, resume=True,
                    progress=False)
  assert rest.metadata["stopped_early"] is False and rest.metadata["steps_this_run"] == 40 - done
  np.testing.assert_array_equal(rest.images, want.images)


def test_time_budget_stop_runs_the_final_evaluation(digits_small):
  """"One evaluation at the end" holds when the budget, not the step count, ends the run."""
  alg = fake_algorithm(sleep=0.02)
  got = driver.run(alg, digits_small, 40, key=0, time_budget=0.1, eval_every=1000,
                   eval_fn=lambda state, ds: {"count": float(state.count)}, progress=False)
  done = got.metadata["steps"]
  assert 1 <= done < 40
  assert got.metadata["history"]["eval"] == [[done, {"count": float(done)}]]


def test_cli_time_budget_then_resume(finished, tmp_path):
  out = tmp_path / "out"
  code, _, err = _main(BASE + ["--out", out, "--time-budget", "0.01", "--no-progress"])
  assert code == 0, err
  summary = json.loads((out / "summary.json").read_text())
  assert summary["stopped_early"] is True and summary["steps"] == 1
  assert summary["requested_steps"] == 4
  assert _ckpt(out / "checkpoint.npz")[1]["count"] == 1
  assert "time budget of 0.01 s spent after step 1 of 4" in (out / "kip.log").read_text()
  code, _, err = _main(BASE + ["--out", out, "--resume", "--no-progress"])
  assert code == 0, err
  want = kip.DistilledSet.load(finished[0] / "distilled.npz")
  got = kip.DistilledSet.load(out / "distilled.npz")
  np.testing.assert_array_equal(got.images, want.images)
  np.testing.assert_array_equal(got.labels, want.labels)


def test_ctrl_c_then_resume_is_bit_identical(finished, tmp_path, monkeypatch):
  """Ctrl-C at step 2 exits 130 with a checkpoint; --resume ends where the full run ended.

  Also: summary.json's ``seconds`` counts both processes, and kip.log holds both runs, each
  starting with a separator, the command line and the config.
  """
  real_run = driver.run

  def interrupt(step, metrics):
    if step == 2:
      time.sleep(1.0)  # time the resumed summary must still count
      raise KeyboardInterrupt

  monkeypatch.setattr(driver, "run", lambda *a, **k: real_run(*a, **{**k, "callback": interrupt}))
  out = tmp_path / "out"
  code, stdout, err = _main(BASE + ["--out", out])
  assert code == 130 and stdout == ""
  assert f"interrupted: run again with --resume to continue from {out / 'checkpoint.npz'}" in err
  assert "Traceback" not in err
  meta = _ckpt(out / "checkpoint.npz")[1]
  assert meta["count"] == 2 and meta["seconds"] >= 1.0
  assert not (out / "distilled.npz").exists()

  monkeypatch.setattr(driver, "run", real_run)
  code, _, err = _main(BASE + ["--out", out, "--resume"])
  assert code == 0, err
  want = kip.DistilledSet.load(finished[0] / "distilled.npz")
  got = kip.DistilledSet.load(out / "distilled.npz")
  np.testing.assert_array_equal(got.images, want.images)
  np.testing.assert_array_equal(got.labels, want.labels)
  assert got.metadata["history"]["loss"] == want.metadata["history"]["loss"]
  assert got.metadata["steps_this_run"] == 2
  summary = json.loads((out / "summary.json").read_text())
  assert summary["seconds"] >= meta["seconds"] + got.metadata["loop_seconds"]

  log = (out / "kip.log").read_text().splitlines()
  separator = "=" * 20 + " kip kip run " + "=" * 20
  starts = [i for i, line in enumerate(log) if line.endswith(separator)]
  assert len(starts) == 2 and starts[0] == 0
  assert log[starts[0] + 1].endswith(f"command: kip {' '.join(BASE)} --out {out}")
  assert log[starts[1] + 1].endswith(f"command: kip {' '.join(BASE)} --out {out} --resume")
  for a, b in zip(starts, starts[1:] + [len(log)]):
    assert any("config: KIPConfig {" in line for line in log[a:b])
  assert any("resumed kip from" in line for line in log[starts[1]:])


# ----------------------------------------------------------------------------- values
@pytest.mark.parametrize("option,value,message", [
    ("--lr", "0", "argument --lr: 0.0 must be a finite number > 0"),
    ("--lr", "-0.1", "argument --lr: -0.1 must be a finite number > 0"),
    ("--lr", "nan", "argument --lr: nan must be a finite number > 0"),
    ("--lr", "inf", "argument --lr: inf must be a finite number > 0"),
    ("--lr", "fast", "argument --lr: 'fast' is not a number"),
    ("--steps", "0", "argument --steps: 0 must be >= 1"),
    ("--steps", "-5", "argument --steps: -5 must be >= 1"),
    ("--seed", "-1", "argument --seed: -1 must be >= 0"),
    ("--support-size", "-10", "argument --support-size: -10 must be >= 1"),
    ("--images-per-class", "0", "argument --images-per-class: 0 must be >= 1"),
    ("--target-batch-size", "0", "argument --target-batch-size: 0 must be >= 1"),
    ("--checkpoint-every", "-1", "argument --checkpoint-every: -1 must be >= 0"),
    ("--eval-every", "-1", "argument --eval-every: -1 must be >= 0"),
    ("--eval-size", "0", "argument --eval-size: 0 must be >= 1"),
    ("--depth", "-1", "argument --depth: -1 must be >= 0"),
    ("--reg", "-1", "argument --reg: -1.0 must be a finite number >= 0"),
    ("--time-budget", "0", "argument --time-budget: 0.0 must be a finite number > 0"),
    ("--zca-reg", "nan", "argument --zca-reg: nan must be a finite number >= 0"),
])
def test_cli_rejects_bad_values(tmp_path, option, value, message):
  drop = {"--support-size": 2, "--images-per-class": 2, "--steps": 2}
  argv = list(BASE)
  if option in drop:  # replace the BASE value rather than giving the option twice
    i = argv.index("--support-size" if option == "--images-per-class" else option)
    del argv[i:i + 2]
  code, stdout, err = _main(argv + [option, value, "--out", tmp_path / "o"])
  assert code == 2 and stdout == ""
  assert err.strip().splitlines()[-1] == f"kip distill: error: {message}"
  assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("option,message", [
    ("learning_rate=0", "learning_rate=0 must be a finite number > 0."),
    ("learning_rate=-1e8", "learning_rate=-100000000.0 must be a finite number > 0."),
    ("target_batch_size=-5", "target_batch_size=-5 must be an integer >= 1."),
    ("bogus=1", "--option bogus: KIPConfig has no such field; its fields are ["),
])
def test_cli_rejects_bad_options(tmp_path, option, message):
  code, _, err = _main(BASE + ["--option", option, "--out", tmp_path / "o"])
  assert code == 2 and "Traceback" not in err
  assert _error_line(err).startswith(f"kip: error: {message}")


KC, LC = kip_method.KIPConfig, kip_method.LSConfig


@pytest.mark.parametrize("make,message", [
    (lambda: KC(learning_rate=0.0), "learning_rate=0.0 must be a finite number > 0."),
    (lambda: KC(learning_rate=-1.0), "learning_rate=-1.0 must be a finite number > 0."),
    (lambda: KC(learning_rate=float("nan")), "learning_rate=nan must be a finite number > 0."),
    (lambda: KC(learning_rate=float("inf")), "learning_rate=inf must be a finite number > 0."),
    (lambda: KC(temperature_lr=0.0), "temperature_lr=0.0 must be a finite number > 0."),
    (lambda: KC(target_batch_size=0), "target_batch_size=0 must be an integer >= 1."),
    (lambda: KC(images_per_class=-1), "images_per_class=-1 must be an integer >= 1."),
    (lambda: KC(steps=-1), "steps=-1 must be >= 0."),
    (lambda: KC(reg=-1.0), "reg=-1.0 must be a finite number >= 0."),
    (lambda: LC(batch_size=0), "batch_size=0 must be an integer >= 1."),
    (lambda: LC(num_targets=0), "num_targets=0 must be an integer >= 1."),
    (lambda: driver.Divergence(factor=1.0), "Divergence.factor=1.0 must be a finite number > 1"),
    (lambda: driver.Divergence(patience=0), "Divergence.patience=0 must be >= 1."),
])
def test_library_rejects_bad_values(make, message):
  with pytest.raises(ValueError) as err:
    make()
  assert str(err.value).startswith(message)


@pytest.mark.parametrize("kwargs,message", [
    ({"steps": -1}, "steps=-1 must be >= 0."),
    ({"checkpoint_every": -1}, "checkpoint_every=-1 must be >= 0."),
    ({"eval_every": -2}, "eval_every=-2 must be >= 0."),
    ({"time_budget": 0}, "time_budget=0 must be > 0 seconds (or None)."),
    ({"resume": True, "overwrite": True}, "resume and overwrite exclude each other"),
])
def test_driver_rejects_bad_values(digits_small, kwargs, message):
  with pytest.raises(ValueError) as err:
    driver.run(fake_algorithm(), digits_small, **{"steps": 3, **kwargs})
  assert str(err.value).startswith(message)
