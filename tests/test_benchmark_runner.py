"""The benchmark suite runner: one tiny digits config, run twice (resumable), tables, RESULTS.md."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from benchmarks import common
from benchmarks import run

TINY = {
    "name": "tiny", "title": "tiny digits suite",
    "dataset": {"name": "digits", "preprocess": "standardize"},
    "seed": 0, "ipc": [1],
    "caption": "Test settings: a few steps, one restart.",
    "omitted": {"kip_convnet": "too slow for a unit test"},
    "methods": {
        "kip_fc": {
            "label": "KIP, FC kernel", "algorithm": "kip",
            "distill": {"kernel": {"architecture": "fc", "depth": 2}, "steps": 3,
                        "learning_rate": 0.04, "target_batch_size": 100},
            "krr": {},
            # Two finite evaluations, one column each: a fixed-lr one and a tuned one.
            "finite": [{"column": "FC-32", "model": "fc", "model_kwargs": {"width": 32},
                        "recipe": "kip", "restarts": 1, "recipe_overrides": {"steps": 5}},
                       {"column": "FC-16 tuned", "model": "fc", "model_kwargs": {"width": 16},
                        "recipe": "kip", "restarts": 2, "recipe_overrides": {"steps": 5},
                        "tune": {"validation_size": 50, "lr_factors": [0.5, 1.0],
                                 "weight_decays": [0.0], "ntk_images": 8}}],
            "anchor": {"krr": "kip_krr", "finite": "kip_transfer"}},
        "random": {
            "label": "random real", "algorithm": "random",
            "krr": {"kernel": {"architecture": "fc", "depth": 2}},
            "finite": {"model": "fc", "model_kwargs": {"width": 32}, "recipe": "dc",
                       "restarts": 2, "restarts_per_call": 1, "recipe_overrides": {"epochs": 5},
                       "fresh_subsets": True},
            "anchor": {"finite": "random"}},
    },
}


def _mtimes(directory):
  return {f: os.stat(os.path.join(directory, f)).st_mtime_ns for f in sorted(os.listdir(directory))}


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
  root = tmp_path_factory.mktemp("suite")
  config = root / "tiny.json"
  config.write_text(json.dumps(TINY))
  out = root / "out"
  first = run.main(["--config", str(config), "--out", str(out)])
  return config, out, first


def test_first_run_writes_every_cell(suite):
  _, out, first = suite
  assert first["computed"] == ["kip_fc_ipc1", "random_ipc1"]
  for name in first["computed"]:
    rec = json.loads((out / "cells" / f"{name}.json").read_text())
    assert rec["kind"] == run.CELL_KIND and rec["machine"]["device"]
    assert 0 < rec["krr"]["accuracy"] <= 1
    evals = TINY["methods"][rec["method"]]["finite"]
    evals = evals if isinstance(evals, list) else [evals]
    assert len(rec["finite"]) == len(evals)
    for e, r in zip(evals, rec["finite"]):
      assert r["restarts"] == e["restarts"] == len(r["accuracies"])
      assert r["column"] == e.get("column", e["model"])
    assert rec["distill_seconds"] >= 0 and rec["eval_seconds"] > 0
    assert (out / rec["distilled"]).exists() and (out / rec["grid"]).exists()
  assert not (out / "checkpoints" / "kip_fc_ipc1").exists()  # removed once the cell is done
  assert not list((out / "cells").glob("*.finite*.json"))  # stage files too


def test_tuned_evaluation_chooses_on_validation_data_and_records_it(suite):
  _, out, _ = suite
  rec = json.loads((out / "cells" / "kip_fc_ipc1.json").read_text())
  fixed, tuned = rec["finite"]
  assert "tuning" not in fixed or not fixed["tuning"]
  t = tuned["tuning"]
  assert t["validation_size"] == 50 and t["lr_rule"] == "ntk"
  assert t["chosen"]["lr_factor"] in (0.5, 1.0) and len(t["grid"]) == 2
  assert tuned["recipe"]["learning_rate"] == pytest.approx(t["chosen"]["learning_rate"])


def test_table_has_anchor_columns_and_caption(suite):
  _, out, first = suite
  table = (out / "table.md").read_text()
  header = table.splitlines()[table.splitlines().index(first["table"].splitlines()[0])]
  assert "published KRR %" in header and "published finite %" in header
  assert "FC-32 % (mean ± std)" in header and "FC-16 tuned % (mean ± std)" in header
  assert "fc % (mean ± std)" in header  # a single evaluation's column: its model name
  kip_row = next(line for line in table.splitlines() if line.startswith("| KIP, FC kernel"))
  assert kip_row.count("(n=1)") == 1 and kip_row.count("(n=2)") == 1
  random_row = next(line for line in table.splitlines() if line.startswith("| random real"))
  assert random_row.count("(n=2)") == 1 and random_row.count("| - |") >= 2  # no FC-32 columns
  assert "Finite protocols (column: protocol, unless the row names another): FC-32: " \
         "fc(width=32)/kip 5 steps" in table
  assert "L2 tuned on 50 training images (f in 0.5/1, L2 in 0)" in table
  assert "; fc: fc(width=32)/dc 5 ep, new subset per net." in table
  assert "| as caption |" in kip_row
  # The tuned column's choices, starred on the grid's edge (two factors: always the edge).
  rec = json.loads((out / "cells" / "kip_fc_ipc1.json").read_text())
  f = rec["finite"][1]["tuning"]["chosen"]["lr_factor"]
  assert ("FC-16 tuned tuning, chosen lr factor / L2 by method and IPC (1 of 1 with a value on "
          f"the grid's edge, starred: the best setting may lie outside the grid): "
          f"kip_fc 1: {f:g}* / 0." in table)
  assert "| KIP, FC kernel | 1 |" in table and "| random real | 1 |" in table
  assert "Test settings" in table and "Not in this tier: kip_convnet" in table
  summary = json.loads((out / "suite.json").read_text())
  assert summary["kind"] == run.SUITE_KIND and summary["pending"] == []


def test_protocol_summary_names_the_preset_length_and_the_search():
  from benchmarks.suite.tables import protocol_summary
  assert protocol_summary({"model": "convnet", "recipe": "dc"}) == "convnet/dc 300 ep"
  assert protocol_summary({"model": "fc", "recipe": "kip"}) == "fc/kip 5000 steps"
  tuned = protocol_summary({"model": "fc", "recipe": "kip", "tune": {"search_epochs": 1000}})
  assert tuned.endswith("(f in 0.25/0.5/1, L2 in 0/0.001, 1000-epoch search runs)")


def test_anchors_are_filled_in_for_fashion_mnist():
  config = dict(TINY, dataset={"name": "fashion_mnist"})
  cells = run.plan(config)
  rec = {"label": "x", "krr": {"accuracy": 0.5}, "finite": {"mean": 0.5, "std": 0.0,
                                                            "restarts": 1},
         "distill_seconds": 1.0, "eval_seconds": 1.0, "machine": {"device": "cpu:0"}}
  table, _ = run.render_table(config, [rec, rec], cells)
  assert common.anchor("kip_krr", 1) in table and common.anchor("random", 1) in table


def test_fashion_mnist_tables_end_with_the_ceiling_of_each_network():
  config = dict(TINY, dataset={"name": "fashion_mnist"})
  cells = run.plan(config)
  models = {"fc"}  # every finite evaluation of TINY trains an FC network
  rec = {"label": "x", "krr": {"accuracy": 0.5}, "finite": {"mean": 0.5, "std": 0.0,
                                                            "restarts": 1},
         "distill_seconds": 1.0, "eval_seconds": 1.0, "machine": {"device": "cpu:0"}}
  some = sorted(models)[0]
  ceilings = {some: {"model": some, "epochs": 20, "test_accuracy": 90.18, "seconds": 226.0,
                     "result": {"recipe": {"learning_rate": 0.09}}}}
  table, caption = run.render_table(config, [rec] * len(cells), cells, ceilings=ceilings)
  lines = table.splitlines()
  assert f"| whole training set ({some}; ceiling) | all |" in table
  assert "90.2 (n=1, 10,000 test images)" in table and "20 ep, lr 0.09" in table
  assert lines[-len(models)].startswith("| whole training set")  # the last rows
  for m in models - {some}:
    assert f"| whole training set ({m}; ceiling) | all | - | - | not measured |" in table
  assert "Ceiling rows" in caption
  table, caption = run.render_table(dict(TINY), [rec] * len(cells), cells, ceilings=ceilings)
  assert "whole training set" not in table and "Ceiling rows" not in caption  # not F-MNIST


def test_second_run_recomputes_nothing(suite):
  config, out, _ = suite
  before = _mtimes(out / "cells"), _mtimes(out / "distilled")
  second = run.main(["--config", str(config), "--out", str(out)])
  assert second["computed"] == []
  assert (_mtimes(out / "cells"), _mtimes(out / "distilled")) == before


def test_interrupted_cell_recomputes_only_itself(suite):
  config, out, _ = suite
  # As after a crash during the evaluation: the distilled set is saved, the cell JSON is not.
  (out / "cells" / "random_ipc1.json").unlink()
  other = (out / "cells" / "kip_fc_ipc1.json").stat().st_mtime_ns
  saved = (out / "distilled" / "random_ipc1.npz").stat().st_mtime_ns
  third = run.main(["--config", str(config), "--out", str(out), "--only", "random"])
  assert third["computed"] == ["random_ipc1"]
  assert (out / "cells" / "kip_fc_ipc1.json").stat().st_mtime_ns == other
  assert (out / "distilled" / "random_ipc1.npz").stat().st_mtime_ns == saved  # reused


def test_time_budget_stops_between_restart_groups_and_resumes(suite, tmp_path):
  config, _, _ = suite
  out = tmp_path / "chunked"
  args = ["--config", str(config), "--out", str(out), "--only", "random"]
  first = run.main(args + ["--max-minutes", "0"])  # the first group always runs
  assert first["computed"] == [] and "restart group 1 of 2" in first["stopped"]
  stage = json.loads((out / "cells" / "random_ipc1.finite0.json").read_text())
  assert len(stage["groups"]) == 1
  saved = (out / "distilled" / "random_ipc1.npz").stat().st_mtime_ns
  second = run.main(args)
  assert second["computed"] == ["random_ipc1"]
  rec = json.loads((out / "cells" / "random_ipc1.json").read_text())
  (fin,) = rec["finite"]
  assert fin["seeds"] == [0, 1] and fin["restarts"] == 2
  assert fin["accuracies"][0] == stage["groups"][0]["accuracies"][0]
  assert (out / "distilled" / "random_ipc1.npz").stat().st_mtime_ns == saved
  assert not (out / "cells" / "random_ipc1.finite0.json").exists()
  assert "Not yet run: kip_fc_ipc1" in second["caption"]
  # Provenance: the set and restart group 0 came from the first call, group 1 from the second.
  cmd = "python -m benchmarks.run " + " ".join(args)
  first_cmd = cmd + " --max-minutes 0"
  assert stage["groups"][0]["command"] == first_cmd
  assert rec["distill_command"] == first_cmd and rec["command"] == cmd
  assert fin["commands"] == [first_cmd, cmd]
  assert rec["commands"] == [first_cmd, cmd]
  assert {first_cmd, cmd} <= set(second["commands"])


def test_time_budget_stops_between_evaluations_and_keeps_the_first(tmp_path):
  config = json.loads(json.dumps(TINY))
  ev = {"model": "fc", "recipe": "dc", "restarts": 1, "recipe_overrides": {"epochs": 3}}
  config["methods"]["random"]["finite"] = [dict(ev, column="A", model_kwargs={"width": 32}),
                                           dict(ev, column="B", model_kwargs={"width": 16})]
  path = tmp_path / "two.json"
  path.write_text(json.dumps(config))
  out = tmp_path / "out"
  args = ["--config", str(path), "--out", str(out), "--only", "random"]
  first = run.main(args + ["--max-minutes", "0"])  # evaluation A runs, B does not start
  assert first["computed"] == [] and "finite evaluation 2 of 2 not started" in first["stopped"]
  stage = json.loads((out / "cells" / "random_ipc1.finite0.json").read_text())
  assert not (out / "cells" / "random_ipc1.finite1.json").exists()
  second = run.main(args)
  assert second["computed"] == ["random_ipc1"]
  rec = json.loads((out / "cells" / "random_ipc1.json").read_text())
  assert [r["column"] for r in rec["finite"]] == ["A", "B"]
  assert rec["finite"][0]["accuracies"] == stage["groups"][0]["accuracies"]  # kept, not rerun


@pytest.mark.parametrize("finite, match", [
    ({"model": "fc", "recipe": "kip", "restarts": 2, "fresh_subsets": True, "tune": True},
     "tune with fresh_subsets"),
    ({"model": "fc", "recipe": "kip", "restarts": 4, "restarts_per_call": 2, "tune": True},
     "tune with restarts_per_call"),
    ({"model": "fc", "recipe": "kip", "tune": {"lr_factor": [1.0]}}, "lr_factor"),
    ({"model": "fc", "recipe": "kip", "tune": "yes"}, "finite.tune='yes'"),
])
def test_bad_finite_evaluations_are_named_before_any_compute(finite, match):
  config = json.loads(json.dumps(TINY))
  config["methods"]["random"]["finite"] = finite
  cell = [c for c in run.plan(config) if c.method == "random"][0]
  with pytest.raises((ValueError, TypeError), match=match):
    run.validate(cell)


def test_config_check_names_bad_finite_lists():
  config = json.loads(json.dumps(TINY))
  config["methods"]["random"]["finite"] = [{"model": "fc"}, {"model": "fc"}]
  with pytest.raises(ValueError, match="share the column"):
    run.check_config(config)
  config["methods"]["random"]["finite"] = "fc"
  with pytest.raises(ValueError, match="expected an evaluation"):
    run.check_config(config)


def test_changed_settings_recompute_the_cell(suite, tmp_path):
  _, out, _ = suite
  config = json.loads(json.dumps(TINY))
  config["methods"]["random"]["finite"]["recipe_overrides"] = {"epochs": 6}
  config["methods"]["kip_fc"]["label"] = "renamed"  # presentation only: no recompute
  cells = run.plan(config)
  assert run.finished(config, cells[0], str(out)) is not None
  assert run.finished(config, cells[1], str(out)) is None


def test_changed_evaluation_reuses_the_set_and_the_unchanged_evaluations(suite, tmp_path,
                                                                        capsys):
  """Only the changed evaluation runs (and KRR); the set and the other evaluation carry over."""
  import shutil
  _, out, _ = suite
  work = tmp_path / "out"
  shutil.copytree(out, work)
  before = json.loads((work / "cells" / "kip_fc_ipc1.json").read_text())
  saved = (work / "distilled" / "kip_fc_ipc1.npz").stat().st_mtime_ns
  config = json.loads(json.dumps(TINY))
  config["methods"]["kip_fc"]["finite"][1]["recipe_overrides"] = {"steps": 6}
  path = tmp_path / "changed.json"
  path.write_text(json.dumps(config))
  run.main(["--config", str(path), "--out", str(work), "--dry-run"])
  listing = capsys.readouterr().out
  assert "kip_fc_ipc1          to run (reuses distilled set, finite0)" in listing
  summary = run.main(["--config", str(path), "--out", str(work), "--only", "kip_fc",
                      "--no-results-md"])
  assert summary["computed"] == ["kip_fc_ipc1"]
  rec = json.loads((work / "cells" / "kip_fc_ipc1.json").read_text())
  assert (work / "distilled" / "kip_fc_ipc1.npz").stat().st_mtime_ns == saved
  assert rec["reused"] == {"parts": ["finite0"], "command": before["command"],
                           "finished_utc": before["finished_utc"]}
  assert rec["krr"]["accuracy"] == before["krr"]["accuracy"]  # recomputed, same set
  assert rec["finite"][0] == before["finite"][0]
  assert rec["finite"][1]["recipe"]["steps"] == 6 != before["finite"][1]["recipe"]["steps"]
  assert before["command"] in summary["commands"]
  assert rec["distill_command"] == before["distill_command"] == before["command"]
  assert rec["finite"][1]["commands"] == [rec["command"]] != [before["command"]]
  assert rec["commands"] == [before["command"], rec["command"]]
  # A changed distillation carries nothing over.
  config["methods"]["kip_fc"]["distill"]["steps"] = 2
  path.write_text(json.dumps(config))
  run.main(["--config", str(path), "--out", str(work), "--only", "kip_fc", "--no-results-md"])
  again = json.loads((work / "cells" / "kip_fc_ipc1.json").read_text())
  assert "reused" not in again and again["distill_steps"] == 2
  assert (work / "distilled" / "kip_fc_ipc1.npz").stat().st_mtime_ns != saved


def test_write_results_collects_every_result(suite, tmp_path):
  _, out, _ = suite
  results = tmp_path / "results"
  (results / "kip_cpu").mkdir(parents=True)
  common.write_json(str(results / "kip_cpu" / "kip_cpu.json"), {
      "args": {"ipc": [1], "steps": [10], "no_progress": True}, "results": [],
      "machine": {"device": "cpu:0", "cpu_count": 2, "time_utc": "2026-01-01 00:00 UTC"},
      "table": "| IPC | KIP |\n|---|---|\n| 1 | 80 |"})
  (results / "kip_cpu" / "kip_fc_ipc1.png").write_bytes(b"png")
  common.write_json(str(results / "kernel_throughput.json"), {
      "ours": {"impl": "kip", "jax": "0.10", "fwd_pairs_per_s": 50.0, "grad_pairs_per_s": 20.0,
               "peak_rss_mb": 900, "device": "cpu"}, "memory": {}})
  common.write_json(str(results / "cross_arch.json"), {"machine": {"device": "cpu:0"}})
  (results / "cross_arch.md").write_text("| set | FC |\n|---|---|\n| KIP | 70 |")
  suite_dir = results / "suite_tiny"
  suite_dir.mkdir()
  (suite_dir / "suite.json").write_text((out / "suite.json").read_text())
  md = run.write_results_md(str(results), str(tmp_path / "RESULTS.md"))
  assert "tiny digits suite" in md and "published KRR %" in md
  assert "python -m benchmarks.kip_cpu --ipc 1 --no-progress --steps 10" in md
  assert "results/kip_cpu/kip_fc_ipc1.png" in md
  assert "fwd pairs/s" in md and "| KIP | 70 |" in md
  assert "results/suite_tiny/distilled/kip_fc_ipc1.png" in md
  assert "\n## Protocols\n" in md  # the protocol paragraphs, then one section per result
  assert md.count("\n## ") == 5


def test_readme_block_holds_the_cpu_tier_table(suite, tmp_path):
  from benchmarks.suite import results_md
  _, out, _ = suite
  results = tmp_path / "results"
  (results / "suite_cpu").mkdir(parents=True)
  (results / "suite_cpu" / "suite.json").write_text((out / "suite.json").read_text())
  readme = tmp_path / "README.md"
  text = f"# x\n\nbefore\n{results_md.README_BEGIN}\nstale\n{results_md.README_END}\nafter\n"
  readme.write_text(text)
  assert run.update_readme(str(results), str(readme))
  new = readme.read_text()
  assert new.startswith("# x\n\nbefore\n") and new.endswith(f"{results_md.README_END}\nafter\n")
  assert "stale" not in new and "| KIP, FC kernel | 1 |" in new
  header = next(line for line in new.splitlines() if line.startswith("| method"))
  assert "FC-32 % (mean ± std)" in header and "device" not in header
  assert "python -m benchmarks.run --config" in new
  assert run.update_readme(str(results), str(readme)) and readme.read_text() == new  # idempotent
  readme.write_text("no markers\n")
  assert not run.update_readme(str(results), str(readme))
  assert readme.read_text() == "no markers\n"


@pytest.mark.parametrize("tier", ["cpu", "gpu"])
def test_tier_configs_are_valid(tier):
  config = run.load_config(tier)
  methods = set(config["methods"]) | set(config.get("omitted", {}))
  assert methods == set(run.METHODS)
  for cell in run.all_cells(config):
    run.validate(cell)
  assert run.plan(config)


def test_fc_grid_check_remakes_the_cpu_tier_sets_and_widens_only_the_fc_grid():
  from benchmarks.suite import cells, config as suite_config, files
  from kip.transfer import get_recipe
  tier = run.load_config("cpu")
  check = run.load_config(path=os.path.join(suite_config.CONFIG_DIR, "cpu_fc_grid.json"))
  tier_cells = {c.name: c for c in run.plan(tier)}
  for cell in run.plan(check):
    run.validate(cell)
    ours = files.jsonable(run.fingerprint(check, cell))
    theirs = files.jsonable(run.fingerprint(tier, tier_cells[cell.name]))
    assert cells.distill_part(ours) == cells.distill_part(theirs), cell.name
    assert ours["settings"]["krr"] == theirs["settings"]["krr"]
    assert ours["finite_num_test"] == theirs["finite_num_test"]
    [tier_fc] = [f for f in theirs["settings"]["finite"] if f.get("column") == "FC"]
    fc, *longer = ours["settings"]["finite"]
    for f in [fc, *longer]:  # the tier's FC protocol but for the tuning search
      assert {k: v for k, v in f.items() if k not in ("tune", "column")} == {
          k: v for k, v in tier_fc.items() if k not in ("tune", "column")}
    grid, tier_grid = fc["tune"], tier_fc["tune"]
    assert fc["column"] == "FC" and grid["search_epochs"] == tier_grid["search_epochs"]
    assert set(tier_grid["lr_factors"]) < set(grid["lr_factors"])
    assert set(tier_grid["weight_decays"]) < set(grid["weight_decays"])
    assert min(grid["lr_factors"]) < min(tier_grid["lr_factors"])
    assert max(grid["lr_factors"]) > max(tier_grid["lr_factors"])
    assert max(grid["weight_decays"]) > max(tier_grid["weight_decays"])
    for f in longer:  # the tier's grid, searched with runs as long as the final ones
      assert f["tune"] == {**tier_grid, "search_epochs": f["tune"]["search_epochs"]}
      # one batch holds the whole set, so an epoch is a step: as long as the final runs
      assert 10 * cell.ipc <= get_recipe("kip").batch_size
      assert f["tune"]["search_epochs"] == get_recipe("kip").steps


def test_time_boxed_cell_stops_on_budget_and_resumes_to_the_same_set(suite, tmp_path):
  import kip
  config, reference, _ = suite
  out = tmp_path / "boxed"
  args = ["--config", str(config), "--out", str(out), "--only", "kip_fc"]
  first = run.main(args + ["--max-minutes", "0"])  # the driver's time budget: one step
  assert first["computed"] == []
  assert "inside kip_fc_ipc1 (distillation, step 1 of 3, checkpointed" in first["stopped"]
  assert list((out / "checkpoints" / "kip_fc_ipc1").glob("*/checkpoint.npz"))
  assert not (out / "distilled" / "kip_fc_ipc1.npz").exists()
  second = run.main(args)
  assert second["computed"] == ["kip_fc_ipc1"]
  resumed = kip.DistilledSet.load(str(out / "distilled" / "kip_fc_ipc1.npz"))
  whole = kip.DistilledSet.load(str(reference / "distilled" / "kip_fc_ipc1.npz"))
  assert resumed.metadata["steps"] == whole.metadata["steps"] == 3
  assert resumed.metadata["steps_this_run"] == 2 and whole.metadata["steps_this_run"] == 3
  np.testing.assert_array_equal(resumed.images, whole.images)
  np.testing.assert_array_equal(resumed.labels, whole.labels)
  rec = json.loads((out / "cells" / "kip_fc_ipc1.json").read_text())
  ref = json.loads((reference / "cells" / "kip_fc_ipc1.json").read_text())
  assert rec["krr"]["accuracy"] == ref["krr"]["accuracy"]
  assert [r["accuracies"] for r in rec["finite"]] == [r["accuracies"] for r in ref["finite"]]
  assert not (out / "checkpoints" / "kip_fc_ipc1").exists()


def test_unknown_distill_option_is_named_before_any_compute(tmp_path):
  config = json.loads(json.dumps(TINY))
  config["methods"]["kip_fc"]["distill"]["learning_rat"] = 0.1
  path = tmp_path / "typo.json"
  path.write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"kip_fc_ipc1: .*'learning_rat'.*KIPConfig.*"
                                       r"'learning_rate'"):
    run.main(["--config", str(path), "--out", str(tmp_path / "out")])
  assert not (tmp_path / "out").exists()
  config["methods"]["kip_fc"]["algorithm"] = "kip_fcc"
  with pytest.raises(ValueError, match="algorithm='kip_fcc'; expected one of"):
    run.check_config(config)


def test_options_map_onto_the_registry_config():
  from benchmarks.suite import methods
  spec = methods.resolve("ls", 5, {"kernel": "fc", "num_targets": 200, "checkpoint_every": 7})
  assert type(spec.config).__name__ == "LSConfig" and spec.config.num_targets == 200
  assert spec.config.images_per_class == 5 and spec.run_options == {"checkpoint_every": 7}
  assert callable(spec.components["kernel_fn"])
  with pytest.raises(ValueError, match="'random' has no option 'kernel'"):
    methods.resolve("random", 1, {"kernel": "fc"})


def test_ctrl_c_stops_the_suite_cleanly(tmp_path, monkeypatch):
  from benchmarks.suite import runner

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(runner, "run_cell", interrupted)
  path = tmp_path / "tiny.json"
  path.write_text(json.dumps(TINY))
  with pytest.raises(SystemExit) as e:
    run.main(["--config", str(path), "--out", str(tmp_path / "out")])
  assert e.value.code == 130
  summary = json.loads((tmp_path / "out" / "suite.json").read_text())
  assert summary["pending"] == ["kip_fc_ipc1", "random_ipc1"]


def test_kernel_throughput_keeps_each_implementations_best_round():
  from benchmarks import kernel_throughput as kt
  rounds = [dict(impl="kip-banded", fwd_pairs_per_s=600.0, fwd_seconds=0.2,
                 grad_pairs_per_s=330.0, grad_seconds=0.39, peak_rss_mb=640.0, kernel=[1.0]),
            dict(impl="kip-banded", fwd_pairs_per_s=950.0, fwd_seconds=0.13,
                 grad_pairs_per_s=300.0, grad_seconds=0.43, peak_rss_mb=650.0, kernel=[1.0])]
  best = kt._best(rounds)
  assert (best["fwd_pairs_per_s"], best["fwd_seconds"]) == (950.0, 0.13)
  assert (best["grad_pairs_per_s"], best["grad_seconds"]) == (330.0, 0.39)
  assert best["peak_rss_mb"] == 650.0 and best["kernel"] == [1.0]
  assert [r["fwd_pairs_per_s"] for r in best["rounds"]] == [600.0, 950.0]
