"""The ``kip`` command line, run in-process on scikit-learn's digits with the FC kernel."""

import contextlib
import io
import json
import logging
import os
import shutil

import numpy as np
import pytest

import kip
from kip import cli
from kip._src import distill as D
from kip._src import io as kio

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DISTILL = ["distill", "--dataset", "digits", "--support-size", "20", "--steps", "5",
           "--no-progress"]


def _main(argv):
  """Runs ``kip.cli.main`` and returns ``(exit code, stdout, stderr)``.

  The CLI configures the root logger (a file handler in ``--out``); it is restored afterwards
  so that nothing leaks into other tests.
  """
  root = logging.getLogger()
  saved = root.handlers[:], root.level
  noisy = {n: logging.getLogger(n).level for n in ("jax", "absl", "matplotlib", "PIL")}
  out, err = io.StringIO(), io.StringIO()
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      code = cli.main([str(a) for a in argv])
  finally:
    for h in root.handlers:
      if h not in saved[0]:
        h.close()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for n, level in noisy.items():
      logging.getLogger(n).setLevel(level)
  return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """``(out_dir, stdout)`` of ``kip distill ... --eval-every 2``."""
  d = tmp_path_factory.mktemp("cli") / "out"
  code, out, err = _main(DISTILL + ["--eval-every", "2", "--out", d])
  assert code == 0, err
  return d, out


def test_distill_outputs(run):
  d, out = run
  files = set(os.listdir(d))
  assert {"distilled.npz", "distilled.npz.json", "distilled.png", "summary.json", "kip.log",
          "checkpoint.npz"} <= files
  assert not [f for f in files if f.startswith(".tmp-")]
  summary = json.loads((d / "summary.json").read_text())
  assert json.loads(out.strip().splitlines()[-1]) == summary
  assert (summary["dataset"], summary["method"], summary["support_size"]) == ("digits", "kip",
                                                                               20)
  assert summary["kernel"]["architecture"] == "fc"
  assert 0.3 < summary["krr_test_accuracy"] <= 1.0  # chance is 0.1
  assert (d / "distilled.png").read_bytes()[:8] == PNG_MAGIC
  s = kip.DistilledSet.load(d / "distilled.npz")
  assert len(s) == 20 and s.method == "kip" and s.metadata["steps"] == 5
  assert [step for step, _ in s.metadata["history"]["test_accuracy"]] == [2, 4, 5]
  assert s.metadata["history"]["test_accuracy"][-1][1] == pytest.approx(
      summary["krr_test_accuracy"])
  assert kio.load_npz(d / "checkpoint.npz", kind="checkpoint")[1]["step"] == 5
  log = (d / "kip.log").read_text()
  assert "KRR test accuracy" in log and "test accuracy" in log


def test_evaluate_prints_accuracy(run):
  d, _ = run
  code, out, err = _main(["evaluate", d / "distilled.npz"])
  assert code == 0, err
  result = json.loads(out.strip().splitlines()[-1])
  summary = json.loads((d / "summary.json").read_text())
  assert (result["dataset"], result["method"], result["support_size"]) == ("digits", "kip", 20)
  assert result["krr_test_accuracy"] == pytest.approx(summary["krr_test_accuracy"])


@pytest.mark.parametrize("explicit", [True, False])
def test_show_writes_png(run, tmp_path, explicit):
  d, _ = run
  src = tmp_path / "set.npz"
  shutil.copy(d / "distilled.npz", src)
  argv = ["show", src, "--max-images", "8"]
  want = tmp_path / "set.png"
  if explicit:
    want = tmp_path / "grid" / "x.png"
    argv += ["--out", want]
  code, out, err = _main(argv)
  assert code == 0, err
  assert out.strip() == str(want)
  assert want.read_bytes()[:8] == PNG_MAGIC


def test_resume_continues_from_checkpoint(run, tmp_path):
  """``--resume --steps 7`` on the finished 5-step run restores it and runs steps 6 and 7."""
  d_ref, _ = run
  out = tmp_path / "out"
  out.mkdir()
  shutil.copy(d_ref / "checkpoint.npz", out / "checkpoint.npz")
  argv = [a if a != "5" else "7" for a in DISTILL]
  code, _, err = _main(argv + ["--eval-every", "0", "--out", out, "--resume"])
  assert code == 0, err
  assert "resumed from" in (out / "kip.log").read_text()
  got = kip.DistilledSet.load(out / "distilled.npz")
  want = kip.DistilledSet.load(d_ref / "distilled.npz")
  loss = got.metadata["history"]["loss"]
  assert len(loss) == 7 and loss[:5] == want.metadata["history"]["loss"]
  assert got.metadata["steps"] == 7 and got.metadata["steps_this_run"] == 2
  assert not np.array_equal(got.images, want.images)
  assert kio.load_npz(out / "checkpoint.npz", kind="checkpoint")[1]["step"] == 7


def test_interrupt_exits_130_with_checkpoint(tmp_path, monkeypatch):
  def make_step(*args, **kwargs):
    def step(state, data, key):
      raise KeyboardInterrupt
    return step

  monkeypatch.setattr(D, "make_step", make_step)
  out = tmp_path / "out"
  code, stdout, err = _main(DISTILL + ["--out", out])
  assert code == 130
  assert "--resume" in err and stdout == ""
  assert kio.load_npz(out / "checkpoint.npz", kind="checkpoint")[1]["step"] == 0
  assert not (out / "distilled.npz").exists()


def test_mode_ls(tmp_path):
  out = tmp_path / "ls"
  code, stdout, err = _main(["distill", "--dataset", "digits", "--mode", "ls",
                             "--images-per-class", "1", "--out", out, "--no-progress"])
  assert code == 0, err
  summary = json.loads(stdout.strip().splitlines()[-1])
  assert summary["method"] == "ls" and summary["support_size"] == 10
  assert 0.3 < summary["krr_test_accuracy"] <= 1.0
  s = kip.DistilledSet.load(out / "distilled.npz")
  assert s.method == "ls" and not np.allclose(s.labels, np.eye(10)[s.hard_labels], atol=1e-2)
  assert not (out / "checkpoint.npz").exists()  # no optimisation, nothing to resume


@pytest.mark.parametrize("argv,match", [
    (DISTILL[:4] + ["15", "--out", "{tmp}/o"],
     "support_size=15 cannot be split evenly over 10 classes; use a multiple of 10"),
    (["distill", "--dataset", "digits", "--images-per-class", "0", "--out", "{tmp}/o"],
     "images_per_class=0 must be >= 1"),
    (["distill", "--dataset", "nope", "--out", "{tmp}/o"], "unknown dataset 'nope'"),
    (["evaluate", "{tmp}/missing.npz"], "does not exist"),
    (["show", "{tmp}/junk.npz"], "truncated or corrupt"),
])
def test_bad_arguments_exit_2(tmp_path, argv, match):
  (tmp_path / "junk.npz").write_bytes(b"junk")
  code, out, err = _main([a.replace("{tmp}", str(tmp_path)) for a in argv])
  assert code == 2
  assert "kip: error:" in err and match in err
  assert out == ""


def test_resume_other_run_exit_2(run, tmp_path):
  d, _ = run
  out = tmp_path / "o"
  out.mkdir()
  shutil.copy(d / "checkpoint.npz", out / "checkpoint.npz")
  code, _, err = _main(DISTILL + ["--seed", "1", "--out", out, "--resume"])
  assert code == 2 and "written by a different run" in err


@pytest.mark.parametrize("argv", [
    ["distill", "--dataset", "digits", "--kernel", "bogus", "--out", "x"],
    ["distill", "--dataset", "digits"],  # --out is required
    ["distill", "--support-size", "10", "--images-per-class", "1", "--out", "x"],
])
def test_argparse_errors(argv, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  assert e.value.code == 2
  assert "usage: kip distill" in capsys.readouterr().err
