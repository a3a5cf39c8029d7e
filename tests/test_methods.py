"""Every registered method through the one driver: a run, and (through the CLI) an
interrupted-and-resumed run that ends bit-identical to the uninterrupted one (digits, tiny
settings)."""

import importlib
import json

import numpy as np
import pytest

from kip import methods

STEPS = 4
# Tiny settings per method (the config's own defaults otherwise).
TINY = {
    "kip": dict(target_batch_size=50),
    "ls": dict(num_targets=200),
    "dc": dict(model_kwargs=(("width", 8),), outer_loop=1, inner_loop=1, batch_real=16),
    "dsa": dict(model_kwargs=(("width", 8),), outer_loop=1, inner_loop=1, batch_real=16),
    "dm": dict(model_kwargs=(("width", 8),), batch_real=16),
    "dd": dict(),
    "poison": dict(model="fc", model_kwargs=(("width", 8),), pool_size=2, nets_per_step=1,
                   distill_epochs=1, batch_size=16,
                   pretrain_recipe={"name": "dc", "steps": 5, "batch_size": 16}),
}


def _available(name):
  try:
    importlib.import_module(methods.get(name).module)
    methods.get(name).config_class  # noqa: B018
  except (ImportError, AttributeError):
    return False
  return True


def _config(name, **extra):
  cls = methods.get(name).config_class
  fields = {f for f in cls.__dataclass_fields__}
  kw = {k: v for k, v in TINY.get(name, {}).items() if k in fields}
  if "steps" in fields and name not in ("ls",) and methods.get(name).module.endswith(
      "coresets") is False:
    kw["steps"] = STEPS
  kw.update(extra)
  return methods.make_config(name, 1, **kw)


def _steps(algorithm):
  return algorithm.default_steps


NAMES = methods.names()


def test_registry_lists_descriptions():
  for name in methods.names():
    m = methods.get(name)
    assert m.description and m.name == name
  with pytest.raises(ValueError, match="not registered"):
    methods.get("nope")


# Methods whose algorithm is one step (coresets, LS). The iterative ones run through
# ``methods.run`` in the CLI test below (uninterrupted, then interrupted and resumed).
ONE_STEP = [n for n in NAMES if _available(n) and _steps(methods.make(n, _config(n))) < 2]


def test_one_step_and_iterative_methods_are_both_registered():
  assert {"ls", "random", "herding"} <= set(ONE_STEP)
  assert not {"kip", "dc", "dsa", "dm", "dd", "poison"} & set(ONE_STEP)


@pytest.mark.parametrize("name", ONE_STEP)
def test_one_step_method_reruns_to_the_same_set(name, digits_small):
  want = methods.run(methods.make(name, _config(name)), digits_small, key=3, progress=False)
  assert want.images.shape[0] == digits_small.num_classes
  assert want.metadata["steps"] == want.metadata["steps_this_run"] == 1
  again = methods.run(methods.make(name, _config(name)), digits_small, key=3, progress=False)
  np.testing.assert_array_equal(again.images, want.images)
  np.testing.assert_array_equal(again.labels, want.labels)


def test_configs_hash_and_compare(digits_small):
  for name in NAMES:
    if not _available(name):
      continue
    a, b = _config(name), _config(name)
    assert a == b and hash(a) == hash(b), name
    assert "0x" not in str(a.to_dict()), name


def _cli_options(name):
  cls = methods.get(name).config_class
  out = []
  for k, v in TINY.get(name, {}).items():
    if k in cls.__dataclass_fields__:
      if isinstance(v, tuple):
        value = "[" + ",".join(f'["{a}",{b}]' for a, b in v) + "]"
      else:
        value = json.dumps(v) if isinstance(v, dict) else v
      out += ["--option", f"{k}={value}"]
  return out


@pytest.mark.parametrize("name", NAMES)
def test_cli_every_method_interrupt_and_resume(name, tmp_path, monkeypatch):
  from kip import cli
  from kip._src import driver
  if not _available(name):
    pytest.fail(f"registered method {name!r} cannot be imported")
  base = ["distill", "--method", name, "--dataset", "digits", "--support-size", "10",
          "--steps", "3", "--no-progress", "--eval-every", "0", "--seed", "1",
          *_cli_options(name)]
  assert cli.main(base + ["--out", str(tmp_path / "full")]) == 0
  want = json.loads((tmp_path / "full" / "summary.json").read_text())
  steps = want["steps"]
  assert want["support_size"] == 10
  real_run = driver.run

  def interrupted(*args, **kwargs):  # Ctrl-C after the method's own step 2
    def cb(step, metrics):
      if step == 2:
        raise KeyboardInterrupt
    return real_run(*args, **{**kwargs, "callback": cb})

  if steps >= 3:
    monkeypatch.setattr(driver, "run", interrupted)
    assert cli.main(base + ["--out", str(tmp_path / "cut")]) == 130
    assert not (tmp_path / "cut" / "distilled.npz").exists()
    monkeypatch.setattr(driver, "run", real_run)
    assert cli.main(base + ["--out", str(tmp_path / "cut"), "--resume"]) == 0
  else:
    assert cli.main(base + ["--out", str(tmp_path / "cut")]) == 0
  from kip import DistilledSet
  a = DistilledSet.load(tmp_path / "full" / "distilled.npz")
  b = DistilledSet.load(tmp_path / "cut" / "distilled.npz")
  np.testing.assert_array_equal(a.images, b.images)
  np.testing.assert_array_equal(a.labels, b.labels)
  assert b.metadata["history"]["loss"] == a.metadata["history"]["loss"]
  assert b.metadata["steps"] == a.metadata["steps"] == a.metadata["steps_this_run"] == steps
  assert len(a.metadata["history"]["loss"]) == steps
  if steps >= 3:  # the resumed run did only the steps after the checkpoint
    assert b.metadata["steps_this_run"] == steps - 2
