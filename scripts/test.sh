#!/usr/bin/env bash
# The test suite: the main suite in .venv (newest JAX), then the neural-tangents parity tests in
# the pinned .venv-nt (jax 0.5.3, neural-tangents 0.6.5), where they must run, not skip.
# Extra arguments go to the main pytest run (e.g. -k kernels).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export XLA_PYTHON_CLIENT_PREALLOCATE=false
status=0
.venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --durations=15 "$@" || status=$?
echo "== neural-tangents parity (jax 0.5.3, neural-tangents 0.6.5) =="
KIP_REQUIRE_NT=1 .venv-nt/bin/python -m pytest -q -p no:cacheprovider -n 2 -m nt tests/test_nt_parity.py || status=$?
exit $status
