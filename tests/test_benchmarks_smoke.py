"""Smoke tests: each benchmark script's ``main`` runs end to end on digits with tiny settings."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from benchmarks import compression_sweep, cross_arch, poisoning_cpu, transfer_cpu

QUIET = ["--dataset", "digits", "--no-progress"]


def _saved_kip_set(path, ipc):
  """A stand-in for a saved KIP-FC set (real images, one-hot labels), so no KIP compile."""
  import kip
  ds = kip.data.load("digits")
  s = kip.baselines.random_real(ds, ipc, 0)
  s.replace(method="kip", metadata={"kernel": dict(kip.kernels.fc(3).spec), "steps": 0}
            ).save(path)


def test_transfer_cpu(tmp_path):
  out = tmp_path / "transfer.json"
  kip_path = str(tmp_path / "kip_fc_ipc10.npz")
  _saved_kip_set(kip_path, 10)
  transfer_cpu.main(QUIET + ["--restarts", "2", "--train-steps", "5", "--width", "16",
                             "--kip-path", kip_path, "--no-full", "--json", str(out)])
  res = json.loads(out.read_text())
  assert set(res["results"]) == {"kip", "ls", "random"}
  for r in res["results"].values():
    assert len(r["accuracies"]) == 2 and 0.0 <= r["mean"] <= 1.0
  assert "kip_fc_ipc10.npz" in res["kip_source"]
  assert isinstance(res["clearly_above"], bool)
  assert 0.5 < res["krr"]["kip"] <= 1.0
  assert "| KIP-FC" in res["table"]


def test_cross_arch(tmp_path):
  prefix = str(tmp_path / "cross")
  cross_arch.main(QUIET + ["--rows", "ls", "random", "--cols", "fc", "krr", "--restarts", "2",
                           "--steps", "5", "--widths", "fc=16", "--out", prefix])
  res = json.loads(open(prefix + ".json").read())
  assert res["rows"] == ["ls", "random"] and res["cols"] == ["fc", "krr"]
  for row in res["rows"]:
    assert len(res["cells"][row]["fc"]["accuracies"]) == 2
    assert 0.5 < res["cells"][row]["krr"]["mean"] <= 1.0
  assert res["model_kwargs"] == {"fc": {"width": 16}}
  assert os.path.exists(prefix + ".md")


def test_cross_arch_builds_every_row_through_the_registry(tmp_path, monkeypatch):
  import kip
  assert set(cross_arch.ROW_SPECS) == set(cross_arch.ROWS)
  assert {r.method for r in cross_arch.ROW_SPECS.values()} <= set(kip.methods.names())
  built = []
  make = kip.methods.make

  def spy(name, config=None, **components):
    built.append(name)
    return make(name, config, **components)

  monkeypatch.setattr(kip.methods, "make", spy)
  prefix = str(tmp_path / "cross")
  cross_arch.main(QUIET + ["--rows", "random", "herding", "--cols", "krr", "--ipc", "2",
                           "--out", prefix])
  res = json.loads(open(prefix + ".json").read())
  assert built == ["random", "herding"]
  assert {r: s["method"] for r, s in res["sets"].items()} == {"random": "random",
                                                              "herding": "herding"}
  ds = kip.data.load("digits")
  krr = kip.evaluate.kernel_accuracy(kip.baselines.random_real(ds, 2, 0), ds,
                                     kernel=kip.kernels.fc(3), reg=1e-6)
  assert res["cells"]["random"]["krr"]["mean"] == pytest.approx(krr)  # same set as before


def test_compression_sweep(tmp_path):
  prefix = str(tmp_path / "sweep")
  compression_sweep.main(QUIET + ["--ipc", "1", "5", "500", "--kip-max-ipc", "1",
                                  "--ls-max-ipc", "5", "--kip-steps", "2",
                                  "--target-batch-size", "100", "--out", prefix])
  res = json.loads(open(prefix + ".json").read())
  done = {(m, c["ipc"]) for m, cells in res["results"].items() for c in cells if "acc" in c}
  assert done == {("kip", 1), ("ls", 1), ("ls", 5), ("random", 1), ("random", 5)}
  reasons = {(s["method"], s["ipc"]): s["reason"] for s in res["skipped"]}
  assert "kip-max-ipc" in reasons[("kip", 5)]
  assert "smallest class" in reasons[("random", 500)]
  assert os.path.getsize(prefix + ".png") > 0


def test_poisoning_cpu(tmp_path):
  out = tmp_path / "poison"
  report = poisoning_cpu.main(["--dataset", "digits", "--model", "fc", "--attacked", "3",
                               "--target", "8", "--images", "10", "--pool", "1",
                               "--eval-networks", "1", "--pretrain-steps", "20",
                               "--outer-steps", "3", "--out", str(out)])
  res = json.loads((out / "poisoning_cpu.json").read_text())
  assert res["args"]["attacked"] == 3 and isinstance(res["met"], bool)
  assert len(res["per_network"]) == 1 and len(res["step_sizes"]) == 3  # 3 distill epochs
  assert 0.0 <= res["after"]["attacked_to_target"] <= 1.0
  assert report.before.other_accuracy == pytest.approx(res["before"]["other_accuracy"])
  assert (out / "poison.png").exists() and (out / "poisoning_cpu.md").exists()


def test_kip_rf_cpu_validation_split_and_stored_sets(tmp_path, monkeypatch):
  """The setting search measures on held-out training images; stored sets must match."""
  import kip
  from benchmarks import kip_rf_cpu
  ds = kip.data.load("digits")
  val = kip_rf_cpu.holdout(ds, 100)
  assert val.x_train.shape[0] == ds.x_train.shape[0] - 100
  assert (val.x_test == ds.x_train[-100:]).all() and (val.y_test == ds.y_train[-100:]).all()
  with pytest.raises(SystemExit, match="--validation-size 0"):
    kip_rf_cpu.holdout(ds, 0)
  kip.baselines.random_real(ds, 1, 0).save(tmp_path / "mine_ipc1.npz")
  kip.baselines.random_real(ds, 2, 0).save(tmp_path / "mine_ipc2.npz")
  other = kip.data.load("digits", preprocess="none")
  kip.baselines.random_real(other, 1, 0).save(tmp_path / "raw_ipc1.npz")
  monkeypatch.setattr(kip_rf_cpu, "STORED", {"mine": str(tmp_path / "mine_ipc{ipc}.npz"),
                                             "absent": str(tmp_path / "nope_ipc{ipc}.npz")})
  got = kip_rf_cpu.stored_sets(ds, 1, [str(tmp_path / "raw_ipc1.npz"),
                                       str(tmp_path / "mine_ipc2.npz")])
  assert list(got) == ["mine"] and len(got["mine"]) == 10  # other preprocessing, size skipped
  assert list(kip_rf_cpu.stored_sets(ds, 2)) == ["mine"]


def test_kip_rf_cpu_keeps_results_of_other_ipc_values_with_the_same_settings(tmp_path):
  import argparse
  from benchmarks import kip_rf_cpu
  path = tmp_path / "kip_rf_cpu.json"
  path.write_text(json.dumps({"args": {"lr": 0.03, "ipc": [1], "out": "elsewhere"},
                              "split": "test",
                              "results": [{"ipc": 10, "x": 0}, {"ipc": 1, "x": 1}]}))

  def args(**changes):
    a = argparse.Namespace(fresh=False, quick=False, ipc=[10], lr=0.03, kernel="rf", out="o")
    a.defaults = {"kernel": "rf", "lr": 1e-3, "fresh": False, "quick": False}
    for k, v in changes.items():
      setattr(a, k, v)
    return a

  new = [{"ipc": 10, "x": 2}]
  # a key the old file lacks ("kernel") meant its default then: the IPC 1 result is kept
  assert kip_rf_cpu._merged(str(path), args(), "test", new) == [{"ipc": 1, "x": 1},
                                                                 {"ipc": 10, "x": 2}]
  for changed in (args(lr=0.1), args(kernel="learned"), args(fresh=True)):
    assert kip_rf_cpu._merged(str(path), changed, "test", new) == new
  assert kip_rf_cpu._merged(str(path), args(), "validation", new) == new
  assert kip_rf_cpu._merged(str(tmp_path / "none.json"), args(), "test", new) == new


def test_kip_rf_cpu_reuses_a_random_real_row_only_under_the_same_protocol(tmp_path):
  from benchmarks import kip_rf_cpu
  protocol = {"dataset": "fashion_mnist", "model": "convnet", "recipe": {"name": "dc"},
              "model_config": {"num_classes": 10, "width": 128}, "seed": 0, "restarts": 5,
              "tuning": None}
  rand = dict(protocol, num_images=100, accuracies=[0.7, 0.8], mean=0.75, std=0.05)
  row = {"ipc": 10, "split": "test", "random_convnet": rand}
  path = tmp_path / "other.json"
  path.write_text(json.dumps({"args": {"validation_size": 0}, "quick": False,
                              "results": [row]}))
  got, where = kip_rf_cpu.reused_random([str(path)], 10, "test", protocol, validation_size=0)
  assert got == rand and where.endswith("other.json")
  for changes in ({"seed": 1}, {"restarts": 10}, {"recipe": {"name": "kip"}},
                  {"model_config": {"num_classes": 10, "width": 64}}):
    assert kip_rf_cpu.reused_random([str(path)], 10, "test", dict(protocol, **changes),
                                    validation_size=0) is None
  assert kip_rf_cpu.reused_random([str(path)], 1, "test", protocol, validation_size=0) is None
  assert kip_rf_cpu.reused_random([str(path)], 10, "validation", protocol,
                                  validation_size=0) is None
  assert kip_rf_cpu.reused_random([str(path)], 10, "test", protocol,
                                  validation_size=5000) is None
  # a row reused in turn names the file that measured it
  path.write_text(json.dumps({"args": {}, "results": [dict(row, random_from="x.json")]}))
  assert kip_rf_cpu.reused_random([str(path)], 10, "test", protocol,
                                  validation_size=0) == (rand, "x.json")


def test_kip_rf_cpu_stored_only_adds_the_stored_sets_beside_kept_rows(tmp_path, monkeypatch):
  import kip
  from benchmarks import kip_rf_cpu
  ds = kip.data.load("digits")
  kip.baselines.random_real(ds, 1, 0).save(tmp_path / "mine_ipc1.npz")
  monkeypatch.setattr(kip_rf_cpu, "STORED", {"mine": str(tmp_path / "mine_ipc{ipc}.npz")})
  out = tmp_path / "kip_rf_cpu"
  a = kip_rf_cpu.parse_args(["--ipc", "1", "--stored-only", "--out", str(out)])
  fake = {"accuracies": [0.5, 0.6], "mean": 0.55, "std": 0.05}
  row = {"ipc": 1, "split": "test", "steps": 3, "seconds_per_step": 1.0,
         "krr_rf_accuracy": 0.5, "convnet": fake, "random_convnet": fake,
         "stored_convnet": {}, "target": 74.0, "budget_minutes": 1.0}
  out.mkdir()
  (out / "kip_rf_cpu.json").write_text(json.dumps({"args": {}, "split": "test",
                                                   "results": [row]}))
  transfer = dict(model="fc", model_kwargs={"width": 16, "depth": 1}, recipe="dc", seed=0,
                  recipe_overrides={"epochs": 2}, progress=False)
  kip_rf_cpu._stored_only(kip_rf_cpu.parse_args(["--ipc", "1", "--stored-only", "--stored-ipc",
                                                 "--out", str(out)]), ds, "test", transfer)
  assert json.loads((out / "kip_rf_cpu.json").read_text())["results"][0]["stored_convnet"] == {}
  table = kip_rf_cpu._stored_only(a, ds, "test", transfer)
  saved = json.loads((out / "kip_rf_cpu.json").read_text())
  got = saved["results"][0]
  assert list(got["stored_convnet"]) == ["mine"] and got["stored_later"] == ["mine"]
  assert len(got["stored_convnet"]["mine"]["accuracies"]) == 2  # the row's restarts
  assert "published FRePo" in table and "published RCIG" in table
  assert "mine at IPC 1 in a later `--stored-only` run" in saved["caption"]
  assert "IPC 1: kept from an earlier run" in saved["caption"]
  with pytest.raises(SystemExit, match="no result at IPC \\[10\\]"):
    kip_rf_cpu._stored_only(kip_rf_cpu.parse_args(["--ipc", "10", "--stored-only", "--out",
                                                   str(out)]), ds, "test", transfer)

  # a set is evaluated again only when its file changed (or its result has no digest)
  calls = []
  evaluate = kip.transfer.evaluate
  monkeypatch.setattr(kip.transfer, "evaluate",
                      lambda s, *args, **kw: calls.append(len(s)) or evaluate(s, *args, **kw))
  first = got["stored_convnet"]["mine"]
  mine = kip.DistilledSet.load(tmp_path / "mine_ipc1.npz")
  assert first["set_sha1"] == kip_rf_cpu.set_sha1(mine)
  kip_rf_cpu._stored_only(a, ds, "test", transfer)
  assert calls == []
  kip.baselines.random_real(ds, 1, 1).save(tmp_path / "mine_ipc1.npz")  # re-distilled
  kip_rf_cpu._stored_only(a, ds, "test", transfer)
  again = json.loads((out / "kip_rf_cpu.json").read_text())["results"][0]["stored_convnet"]
  assert calls == [10] and again["mine"]["set_sha1"] != first["set_sha1"]
  saved["results"][0]["stored_convnet"]["mine"].pop("set_sha1")  # a result from before digests
  (out / "kip_rf_cpu.json").write_text(json.dumps(saved))
  kip_rf_cpu._stored_only(a, ds, "test", transfer)
  assert calls == [10, 10]


class _StopAtDistill(Exception):
  pass


@pytest.fixture
def distill_calls(monkeypatch):
  """``kip.distill`` replaced by a recorder that stops the benchmark (digits as the data)."""
  import kip
  seen, digits = [], kip.data.load("digits")

  def fake_distill(ds, **kwargs):
    seen.append(kwargs)
    raise _StopAtDistill

  monkeypatch.setattr(kip.data, "load", lambda name: digits)
  monkeypatch.setattr(kip, "distill", fake_distill)
  return seen


def test_kip_rf_cpu_passes_the_support_augmentation_to_distill(distill_calls):
  """``--augment`` reaches ``kip.distill`` (default: none); other strategies are refused."""
  from benchmarks import kip_rf_cpu
  for argv, want in ((["--augment", "flip_crop"], "flip_crop"), ([], None)):
    with pytest.raises(_StopAtDistill):
      kip_rf_cpu.main(["--ipc", "1", "--no-progress", "--out", "unused"] + argv)
    assert distill_calls[-1]["augment"] == want
  with pytest.raises(SystemExit):
    kip_rf_cpu.parse_args(["--augment", "rotate"])


def test_kip_rf_cpu_passes_the_starting_set_to_distill(distill_calls, tmp_path):
  """``--init`` (one set per ``--ipc`` value) reaches ``kip.distill`` as the loaded set."""
  import kip
  from benchmarks import kip_rf_cpu
  digits = kip.data.load("digits")
  for ipc in (1, 2):
    kip.baselines.random_real(digits, ipc, 0).save(tmp_path / f"s_ipc{ipc}.npz")
  base = ["--no-progress", "--out", "unused"]
  with pytest.raises(_StopAtDistill):
    kip_rf_cpu.main(base + ["--ipc", "2", "1", "--init", str(tmp_path / "s_ipc2.npz"),
                            str(tmp_path / "s_ipc1.npz")])
  assert len(distill_calls[-1]["init"]) == 20  # the first --ipc value's set
  with pytest.raises(_StopAtDistill):
    kip_rf_cpu.main(base + ["--ipc", "1"])
  assert distill_calls[-1]["init"] is None
  with pytest.raises(SystemExit, match="--init takes one value or one per --ipc value"):
    kip_rf_cpu.main(base + ["--ipc", "1", "10", "--init", "a.npz", "b.npz", "c.npz"])


def test_kip_rf_cpu_cosine_decay_reaches_the_optimizer(distill_calls, monkeypatch):
  """``--lr-decay cosine`` gives the optimizer ``--lr`` decaying to 10 % at ``--steps`` (which
  it requires); without it the rate is the constant ``--lr``."""
  import optax
  from benchmarks import kip_rf_cpu
  rates, adam = [], optax.adam

  def fake_adam(learning_rate):
    rates.append(learning_rate)
    return adam(learning_rate)

  monkeypatch.setattr(kip_rf_cpu.optax, "adam", fake_adam)
  base = ["--ipc", "1", "--no-progress", "--out", "unused", "--optimizer", "adam", "--lr", "0.03"]
  with pytest.raises(_StopAtDistill):
    kip_rf_cpu.main(base + ["--lr-decay", "cosine", "--steps", "400"])
  schedule = rates[-1]
  assert float(schedule(0)) == pytest.approx(0.03)
  assert float(schedule(200)) == pytest.approx(0.03 * (0.1 + 0.9 * 0.5))
  assert float(schedule(400)) == pytest.approx(0.003)
  with pytest.raises(_StopAtDistill):
    kip_rf_cpu.main(base)
  assert rates[-1] == 0.03
  with pytest.raises(SystemExit):
    kip_rf_cpu.parse_args(["--lr-decay", "linear", "--steps", "400"])
  with pytest.raises(SystemExit):  # no --steps: the default upper bound is never reached
    kip_rf_cpu.parse_args(["--lr-decay", "cosine"])


def test_dd_study_markdown_from_json(tmp_path):
  """The study's Markdown (settings, both tables, figure links) is rebuilt from its JSON."""
  from benchmarks import dd_study
  cell = {"mean": 0.9, "std": 0.01, "accuracies": [0.9], "step_scale": None}
  archs = {"LinearNet": ["fc", {"depth": 0}], "NonLinearNet": ["fc", {"depth": 1}]}
  matrix = {r: {c: cell for c in archs} for r in list(archs) + [dd_study.ALL]}
  entry = {"images_per_class": 1, "synthetic_images": 2, "compression": 300.0, "sets": {},
           "matrix": {"raw": matrix, "tuned": matrix}}
  results = {"settings": dataclasses.asdict(dd_study.SETTINGS["full"]), "quick": False,
             "seconds": 120.0, "machine": {"device": "cpu:0", "jax": "x"},
             "parts": {"toy": {"dataset": "two_moons", "archs": archs,
                               "original": {a: cell for a in archs},
                               "settings": {"1 per class": entry},
                               "figures": ["toy_data.png"]}}}
  (tmp_path / "dd_study.json").write_text(json.dumps(results))
  path = dd_study.main(["--write-md", str(tmp_path)])
  text = open(path).read()
  assert "300 training images" in text and "`tuned`: one constant step size" in text
  assert "| LinearNet | 90.0 ± 1.0 |" in text and "all three" in text
  assert "Figures: [toy_data](toy_data.png)." in text  # relative to the folder outside results/


def test_dc_paper(tmp_path):
  from benchmarks import dc_paper
  out = tmp_path / "dc_paper"
  dc_paper.main(["--dataset", "digits", "--quick", "--no-progress", "--out", str(out)])
  res = json.loads((out / "dc_paper.json").read_text())
  assert [r["method"] for r in res["rows"]] == ["dc", "dsa"]
  for r in res["rows"]:
    assert r["steps"] == 2 and len(r["convnet"]["accuracies"]) == 1
    assert 0.0 <= r["convnet"]["mean"] <= 1.0
    assert (out / f"{r['method']}_ipc1.npz").exists()
  dsa = res["rows"][1]["convnet"]
  assert dsa["recipe"]["name"] == "dsa" and dsa["augment"] == "dsa"
  assert "| DC |" in res["table"] and "70.5" in res["table"]
