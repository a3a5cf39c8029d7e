"""benchmarks/gpu_check.py --tiny on the CPU: every part runs and leaves its JSON."""

import json

from benchmarks import gpu_check


def test_gpu_check_tiny_writes_every_part(tmp_path):
  summary = gpu_check.main([str(tmp_path), "--tiny"])
  assert {k: v["status"] for k, v in summary["parts"].items()} == {
      "throughput": "ok", "kip_convnet": "ok", "kip_rf": "ok"}
  t = json.loads((tmp_path / "throughput.json").read_text())
  assert {(r["network"], r["path"]) for r in t["rows"]} == {
      ("convnet3", "xla"), ("convnet3", "fused"), ("convnet3", "banded"), ("convnet4", "xla"),
      ("convnet4", "banded")}
  assert all(r["forward_pairs_per_s"] > 0 and r["grad_pairs_per_s"] > 0 for r in t["rows"])
  assert t["depth"] == 1
  for key in ("convnet3_max_rel_diff_fused_vs_xla", "convnet3_max_rel_diff_banded_vs_xla",
              "convnet4_max_rel_diff_banded_vs_xla"):
    assert t[key] < 1e-4, key
  for name in ("kip_convnet", "kip_rf"):
    rows = json.loads((tmp_path / f"{name}.json").read_text())["rows"]
    assert rows and all(r["steps"] >= 1 and 0 <= r["krr_accuracy"] <= 1 for r in rows)
  assert json.loads((tmp_path / "summary.json").read_text())["tiny"] is True
