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
from kip._src import io as kio
from kip._src.methods import kip as kip_method

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
  kip_level = logging.getLogger("kip").level
  out, err = io.StringIO(), io.StringIO()
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      try:
        code = cli.main([str(a) for a in argv])
      except SystemExit as e:  # argparse errors
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
  printed = json.loads(out.strip().splitlines()[-1])  # the summary without versions and config
  assert printed == {k: v for k, v in summary.items() if k not in ("versions", "config")}
  assert (summary["dataset"], summary["method"], summary["support_size"]) == ("digits", "kip",
                                                                               20)
  assert summary["kernel"]["architecture"] == "fc"
  assert 0.3 < summary["krr_test_accuracy"] <= 1.0  # chance is 0.1
  assert (d / "distilled.png").read_bytes()[:8] == PNG_MAGIC
  s = kip.DistilledSet.load(d / "distilled.npz")
  assert len(s) == 20 and s.method == "kip" and s.metadata["steps"] == 5
  evals = s.metadata["history"]["eval"]
  assert [step for step, _ in evals] == [2, 4, 5]
  assert evals[-1][1]["test_accuracy"] == pytest.approx(summary["krr_test_accuracy"])
  assert len(s.metadata["history"]["loss"]) == 5
  assert kio.load_npz(d / "checkpoint.npz", kind="checkpoint")[1]["count"] == 5
  assert "checkpoint.prev.npz" not in files  # --checkpoint-every 100: only the final one
  log = (d / "kip.log").read_text()
  assert "KRR test accuracy" in log and "test_accuracy" in log


def test_evaluate_prints_accuracy(run):
  d, _ = run
  code, out, err = _main(["evaluate", d / "distilled.npz"])
  assert code == 0, err
  result = json.loads(out.strip().splitlines()[-1])
  summary = json.loads((d / "summary.json").read_text())
  assert (result["dataset"], result["method"], result["support_size"]) == ("digits", "kip", 20)
  assert result["krr_test_accuracy"] == pytest.approx(summary["krr_test_accuracy"])


def test_evaluate_tuned_transfer(run):
  d, _ = run
  code, out, err = _main(["evaluate", d / "distilled.npz", "--model", "fc", "--steps", "20",
                          "--restarts", "2", "--tune", "--validation-size", "200",
                          "--no-progress"])
  assert code == 0, err
  t = json.loads(out.strip().splitlines()[-1])["transfer"]
  assert t["tuning"]["validation_size"] == 200 and len(t["accuracies"]) == 2
  assert t["recipe"]["learning_rate"] == pytest.approx(t["tuning"]["chosen"]["learning_rate"])


def test_distill_random_feature_kernel_evaluates_one_fixed_draw(tmp_path):
  d = tmp_path / "rf"
  code, out, err = _main(DISTILL + ["--kernel", "fc_rf", "--rf-width", "32", "--rf-models", "2",
                                    "--get", "nngp", "--eval-every", "0", "--out", d])
  assert code == 0, err
  summary = json.loads((d / "summary.json").read_text())
  s = kip.DistilledSet.load(d / "distilled.npz")
  fixed = kip.kernels.fc_rf(width=32, num_models=2, fixed_seed=0)
  want = kip.evaluate.kernel_accuracy(s, kip.data.load("digits"), fixed, get="nngp")
  assert summary["krr_test_accuracy"] == pytest.approx(want)
  assert 0.3 < want <= 1.0


def test_distill_learned_feature_kernel_reports_its_last_evaluation(tmp_path):
  d = tmp_path / "lf"
  code, out, err = _main(DISTILL + ["--kernel", "learned_features", "--pool-width", "8",
                                    "--pool-models", "2", "--pool-reset-every", "3",
                                    "--pool-lr", "0.01", "--pool-online", "dc", "--get",
                                    "nngp", "--time-budget",
                                    "1e-9", "--eval-every", "1000", "--eval-size", "50",
                                    "--out", d])
  assert code == 0, err
  summary = json.loads((d / "summary.json").read_text())
  assert summary["kernel"]["architecture"] == "learned_features"
  assert summary["kernel"]["num_models"] == 2 and summary["kernel"]["reset_every"] == 3
  assert summary["kernel"]["online"] == "dc" and summary["kernel"]["learning_rate"] == 0.01
  assert summary["kernel"]["model_kwargs"] == {"width": 8}
  assert summary["steps"] == 1  # the budget stopped it after one step, and evaluated there
  assert summary["krr_test_images"] == 50 and 0.0 <= summary["krr_test_accuracy"] <= 1.0
  code, _, err = _main(DISTILL + ["--kernel", "fc", "--pool-models", "2", "--out",
                                  tmp_path / "bad"])
  assert code != 0 and "--kernel learned_features" in err
  code, _, err = _main(DISTILL + ["--kernel", "learned_features", "--rf-width", "8", "--out",
                                  tmp_path / "bad2"])
  assert code != 0 and "--pool-width" in err


def test_distill_init_starts_from_a_saved_set(run, tmp_path):
  d, _ = run
  start = kip.DistilledSet.load(d / "distilled.npz")
  argv = ["distill", "--dataset", "digits", "--steps", "2", "--no-progress", "--eval-every",
          "0", "--init", d / "distilled.npz"]
  code, _, err = _main(argv + ["--out", tmp_path / "a"])
  assert code == 0, err
  summary = json.loads((tmp_path / "a" / "summary.json").read_text())
  assert summary["support_size"] == len(start) == 20  # the set's size, not the default 10
  got = kip.DistilledSet.load(tmp_path / "a" / "distilled.npz")
  assert got.metadata["init"] == kip_method.describe_init(start)
  assert summary["init"] == {**got.metadata["init"], "path": str(d / "distilled.npz")}
  code, _, err = _main(argv + ["--support-size", "10", "--out", tmp_path / "b"])
  assert code == 2 and "init holds 20 images but the support has 10" in err
  code, _, err = _main(argv + ["--method", "dm", "--out", tmp_path / "c"])
  assert code == 2 and "--init starts a KIP run" in err


def test_evaluate_beside_random_real(run):
  d, _ = run
  argv = ["evaluate", d / "distilled.npz", "--model", "fc", "--steps", "10", "--restarts", "2",
          "--no-progress"]
  code, out, err = _main(argv + ["--random-real"])
  assert code == 0, err
  result = json.loads(out.strip().splitlines()[-1])
  t, r = result["transfer"], result["random_real"]
  assert len(t["accuracies"]) == len(r["accuracies"]) == 2
  assert t["recipe"] == r["recipe"] and t["model_config"] == r["model_config"]
  code, out, err = _main(argv)  # the set's own figures do not depend on the comparison
  assert json.loads(out.strip().splitlines()[-1])["transfer"]["accuracies"] == t["accuracies"]
  want = kip.transfer.evaluate_random(kip.data.load("digits"), 2, model="fc", recipe="kip",
                                      restarts=2, recipe_overrides={"steps": 10},
                                      progress=False)
  assert r["accuracies"] == pytest.approx(list(want.accuracies))


@pytest.mark.parametrize("extra,match", [
    ([], "give --model too"),
    (["--model", "fc", "--tune"], "random real sets are not tuned"),
])
def test_evaluate_random_real_needs_an_untuned_model(run, extra, match):
  d, _ = run
  code, out, err = _main(["evaluate", d / "distilled.npz", "--random-real", *extra])
  assert code == 2 and out == "" and match in err


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
  assert "resumed kip from" in (out / "kip.log").read_text()
  got = kip.DistilledSet.load(out / "distilled.npz")
  want = kip.DistilledSet.load(d_ref / "distilled.npz")
  loss = got.metadata["history"]["loss"]
  assert len(loss) == 7 and loss[:5] == want.metadata["history"]["loss"]
  assert got.metadata["steps"] == 7 and got.metadata["steps_this_run"] == 2
  assert not np.array_equal(got.images, want.images)
  assert kio.load_npz(out / "checkpoint.npz", kind="checkpoint")[1]["count"] == 7


def test_interrupt_exits_130_with_checkpoint(tmp_path, monkeypatch):
  """Ctrl-C in the first step: exit 130, the initial state checkpointed, no result."""
  real = kip_method.make_kip

  def make_kip(config, **kwargs):
    def step(state, data, key):
      raise KeyboardInterrupt
    return real(config, **kwargs)._replace(step=step)

  monkeypatch.setattr(kip_method, "make_kip", make_kip)
  out = tmp_path / "out"
  code, stdout, err = _main(DISTILL + ["--out", out])
  assert code == 130
  assert "--resume" in err and stdout == ""
  assert kio.load_npz(out / "checkpoint.npz", kind="checkpoint")[1]["count"] == 0
  assert not (out / "distilled.npz").exists()


def test_mode_ls(tmp_path):
  out = tmp_path / "ls"
  code, stdout, err = _main(["distill", "--dataset", "digits", "--mode", "ls",
                             "--images-per-class", "1", "--out", out, "--no-progress"])
  assert code == 0, err
  summary = json.loads(stdout.strip().splitlines()[-1])
  assert summary["method"] == "ls" and summary["support_size"] == 10
  assert summary["steps"] == 1
  assert json.loads((out / "summary.json").read_text())["config"]["labels"] == "centred"
  assert 0.3 < summary["krr_test_accuracy"] <= 1.0
  s = kip.DistilledSet.load(out / "distilled.npz")
  assert s.method == "ls"
  centred = np.eye(10, dtype=np.float32)[s.hard_labels] - 0.1
  assert not np.allclose(s.labels, centred, atol=1e-2)  # solved, not the initial labels
  # one closed-form step, checkpointed like every method (a resume has nothing left to do)
  assert kio.load_npz(out / "checkpoint.npz", kind="checkpoint")[1]["count"] == 1


def test_method_and_mode_disagree(tmp_path):
  code, _, err = _main(["distill", "--dataset", "digits", "--mode", "ls", "--method", "dm",
                        "--out", tmp_path / "o"])
  assert code == 2 and "--mode ls and --method dm disagree" in err


def test_methods_lists_the_registry():
  code, out, _ = _main(["methods"])
  assert code == 0
  names = [line.split()[0] for line in out.strip().splitlines()]
  assert names == kip.methods.names() and {"kip", "ls", "dc", "dm", "random"} <= set(names)


@pytest.mark.parametrize("argv,code,match", [
    (DISTILL[:4] + ["15", "--out", "{tmp}/o"], 2,
     "support_size=15 cannot be split evenly over 10 classes; use a multiple of 10"),
    (["distill", "--dataset", "nope", "--out", "{tmp}/o"], 2, "unknown dataset 'nope'"),
    (["distill", "--dataset", "digits", "--method", "kip", "--option", "lr", "--out",
      "{tmp}/o"], 2, "--option 'lr': write NAME=VALUE"),
    (["evaluate", "{tmp}/missing.npz"], 1, "does not exist"),  # a missing file: exit 1
    (["show", "{tmp}/junk.npz"], 2, "truncated or corrupt"),
])
def test_bad_arguments_one_line(tmp_path, argv, code, match):
  (tmp_path / "junk.npz").write_bytes(b"junk")
  got, out, err = _main([a.replace("{tmp}", str(tmp_path)) for a in argv])
  assert got == code
  [line] = [line for line in err.splitlines() if line.startswith("kip: error:")]
  assert match in line and "Traceback" not in err
  assert out == ""


def test_resume_other_run_exit_2(run, tmp_path):
  d, _ = run
  out = tmp_path / "o"
  out.mkdir()
  shutil.copy(d / "checkpoint.npz", out / "checkpoint.npz")
  code, _, err = _main(DISTILL + ["--seed", "1", "--out", out, "--resume"])
  assert code == 2
  assert "written by a different run: seed: checkpoint 0 vs this run 1" in err


@pytest.mark.parametrize("argv,match", [
    (["distill", "--dataset", "digits", "--kernel", "bogus", "--out", "x"],
     "argument --kernel: invalid choice: 'bogus'"),
    (["distill", "--dataset", "digits"], "the following arguments are required: --out"),
    (["distill", "--support-size", "10", "--images-per-class", "1", "--out", "x"],
     "argument --images-per-class: not allowed with argument --support-size"),
    (["distill", "--images-per-class", "0", "--out", "x"],
     "argument --images-per-class: 0 must be >= 1"),
    (["distill", "--lr", "0", "--out", "x"], "argument --lr: 0.0 must be a finite number > 0"),
])
def test_argparse_errors(argv, match):
  code, out, err = _main(argv)
  assert code == 2 and out == ""
  assert "usage: kip distill" in err and match in err
