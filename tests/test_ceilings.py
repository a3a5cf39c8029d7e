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


def test_caption_names_the_grid_and_the_search_length():
  c = ceilings.caption(5000, 5, [0.3, 1.0, 3.0])
  assert "among 0.3 / 1 / 3 x 0.03 on the last 5000 training images with 5-epoch runs" in c
  assert "with 2-epoch runs" in ceilings.caption(5000, 2, [1.0])
