"""Suite configs: the tier files ``benchmarks/configs/{cpu,gpu}.json``, read and checked.

A config names the data set, the IPC values and, for each method (table row), its
``algorithm`` (a name of the :mod:`kip.methods` registry), the ``distill`` options (fields of
that method's config dataclass, plus ``kernel`` and ``checkpoint_every``, see
:mod:`benchmarks.suite.methods`), per-IPC overrides (``per_ipc``) and the evaluation protocol
(``krr``, ``finite``).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from typing import Any, Mapping, Optional

from benchmarks.suite.evaluation import column

__all__ = ["BENCH_DIR", "CONFIG_DIR", "METHODS", "load_config", "check_config", "merge",
           "all_ipcs"]

logger = logging.getLogger(__name__)

BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(BENCH_DIR, "configs")
# Methods of the suite, in table order. Any registered algorithm is accepted in configs.
METHODS = ("kip_fc", "kip_convnet", "ls", "dc", "dsa", "dm", "dd", "random", "herding",
           "kcenter", "class_mean")
_PROTOCOLS = ("transfer", "dd")


def load_config(tier: Optional[str] = None, path: Optional[str] = None) -> dict[str, Any]:
  """Reads ``configs/{tier}.json`` or ``path`` and checks it.

  Raises:
    FileNotFoundError: no such config (the known tiers are named).
    ValueError: see :func:`check_config`.
  """
  if path is None:
    if tier is None:
      raise ValueError("give a tier ('cpu', 'gpu') or a config path.")
    path = os.path.join(CONFIG_DIR, f"{tier}.json")
  if not os.path.exists(path):
    known = sorted(os.path.splitext(f)[0] for f in os.listdir(CONFIG_DIR) if f.endswith(".json"))
    raise FileNotFoundError(f"no benchmark config {path!r}; tiers: {known}.")
  with open(path) as f:
    config = json.load(f)
  check_config(config)
  return config


def check_config(config: Mapping[str, Any]) -> None:
  """Raises ``ValueError`` naming the first bad entry of a suite config.

  The ``distill`` options of each cell are checked later, against the method's config
  dataclass, by :func:`benchmarks.suite.plan.validate`.
  """
  from kip import methods as registry
  for key in ("name", "dataset", "ipc", "methods"):
    if key not in config:
      raise ValueError(f"benchmark config lacks {key!r}.")
  for name, m in config["methods"].items():
    algo = m.get("algorithm")
    if algo not in registry.names():
      raise ValueError(f"method {name!r}: algorithm={algo!r}; expected one of "
                       f"{registry.names()} (the kip.methods registry).")
    for over in [m, *m.get("per_ipc", {}).values()]:
      finite = over.get("finite")
      evals = [finite] if isinstance(finite, Mapping) else finite or []
      if not isinstance(evals, list) or not all(isinstance(e, Mapping) for e in evals):
        raise ValueError(f"method {name!r}: finite={finite!r}; expected an evaluation (a dict), "
                         "a list of them (one table column each) or null.")
      for e in evals:
        if e.get("protocol", "transfer") not in _PROTOCOLS:
          raise ValueError(f"method {name!r}: finite.protocol={e.get('protocol')!r}; expected "
                           f"one of {list(_PROTOCOLS)}.")
      columns = [column(e) for e in evals]
      if len(set(columns)) < len(columns):
        raise ValueError(f"method {name!r}: two finite evaluations share the column "
                         f"{columns}; give each a distinct 'column'.")
    bad = set(m.get("per_ipc", {})) - {str(i) for i in all_ipcs(config, m)}
    if bad:
      logger.debug("method %s has per_ipc entries %s outside its IPC list", name, sorted(bad))


def all_ipcs(config: Mapping[str, Any], method_cfg: Mapping[str, Any]) -> list[int]:
  """A method's IPC list (its own ``ipc``, else the config's)."""
  return [int(i) for i in method_cfg.get("ipc", config["ipc"])]


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
  """Recursive dict update (``over`` wins; ``None`` in ``over`` replaces, too)."""
  out = copy.deepcopy(dict(base))
  for k, v in over.items():
    if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
      out[k] = merge(out[k], v)
    else:
      out[k] = copy.deepcopy(v)
  return out
