"""benchmarks/ceilings.py on a tiny setting: tuned on the validation split, tested once."""

import numpy as np
import pytest

from benchmarks import ceilings


def test_ceiling_tunes_on_validation_then_tests(digits):
  row = ceilings.ceiling(digits, "fc", 1, search_epochs=1, lr_factors=[0.3, 1.0],
                         validation_size=200)
  t = row["result"]["tuning"]
  assert t["validation_size"] == 200 and t["lr_rule"] == "recipe" and t["search_epochs"] == 1
  assert [p["learning_rate"] for p in t["grid"]] == pytest.approx([0.009, 0.03])
  assert row["train_images"] == digits.x_train.shape[0] - 200
  assert row["result"]["num_images"] == row["train_images"]
  assert 0 < row["test_accuracy"] <= 100 and row["target"] == 89.0
  assert row["result"]["recipe"]["epochs"] == 1
  assert np.isfinite(row["seconds"])


def test_unknown_model_is_refused():
  with pytest.raises(SystemExit, match="unknown models"):
    ceilings.main(["--models", "vgg", "--json", ""])


def test_table_names_each_rows_search_and_rows_merge():
  assert "among the grid in the 'lr search' column" in ceilings.caption(5000)
  row = lambda m, acc, search: {"model": m, "epochs": 5, "test_accuracy": acc, "target": 1,
                                "reached": True, "seconds": 1.0, "search": search,
                                "result": {"recipe": {"learning_rate": 0.03}}}
  searched = row("fc", 90.0, {"epochs": 5, "lr_factors": [0.3, 1.0, 3.0]})
  fixed = row("convnet", 91.0, None)
  table = ceilings.render([searched, fixed])
  assert "0.3 / 1 / 3 x 0.03, 5-epoch runs" in table and "none (fixed)" in table
  merged = ceilings.merge_rows([row("convnet", 80.0, None), row("lenet", 89.0, None)],
                               [fixed, searched])
  assert [(r["model"], r["test_accuracy"]) for r in merged] == [
      ("fc", 90.0), ("lenet", 89.0), ("convnet", 91.0)]


def test_single_lr_factor_trains_without_search(digits):
  row = ceilings.ceiling(digits, "fc", 1, search_epochs=1, lr_factors=[2.0],
                         validation_size=200)
  assert row["search"] is None and row["result"]["tuning"] is None
  assert row["result"]["recipe"]["learning_rate"] == pytest.approx(0.06)
