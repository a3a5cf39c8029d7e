#!/usr/bin/env bash
# Creates the environments kip needs; safe to re-run (it only adds what is missing).
#   scripts/setup.sh main   -> .venv with kip (and the Debian Fashion-MNIST package)
#   scripts/setup.sh test   -> also the test/TFDS extras and .venv-nt, the pinned
#                              neural-tangents reference (jax 0.5.3 + neural-tangents 0.6.5)
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-main}"
PY="${PYTHON:-python3}"
pipq() { "$1"/bin/pip install --disable-pip-version-check -q "${@:2}"; }

# Real Fashion-MNIST from Debian's package (IDX .gz files in /usr/share/datasets/fashion-mnist).
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ -z "${KIP_DATA_DIR:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian package dataset-fashion-mnist" >&2
    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 ||
     { apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null; })
  else
    echo "[setup] Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'," \
         "or set KIP_DATA_DIR to a folder with the four IDX files." >&2
  fi
fi

stamp() { sha1sum pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12; }
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv" >&2
  "$PY" -m venv .venv
fi
want="main-$(stamp)"; [ "$what" = test ] && want="test-$(stamp)"
if [ "$(cat .venv/.kip-stamp 2>/dev/null)" != "$want" ] && \
   ! { [ "$what" = main ] && [ "$(cat .venv/.kip-stamp 2>/dev/null)" = "test-$(stamp)" ]; }; then
  echo "[setup] installing kip into .venv" >&2
  pipq .venv --upgrade pip
  if [ "$what" = test ]; then pipq .venv -e ".[test,tfds]"; else pipq .venv -e .; fi
  echo "$want" > .venv/.kip-stamp
fi

if [ "$what" = test ]; then
  if [ ! -x .venv-nt/bin/python ]; then
    echo "[setup] creating .venv-nt (neural-tangents reference)" >&2
    "$PY" -m venv .venv-nt
  fi
  if [ "$(cat .venv-nt/.kip-stamp 2>/dev/null)" != "nt-$(stamp)" ]; then
    echo "[setup] installing jax 0.5.3 + neural-tangents 0.6.5 + kip into .venv-nt" >&2
    pipq .venv-nt --upgrade pip
    pipq .venv-nt -e . "jax==0.5.3" "jaxlib==0.5.3" "neural-tangents==0.6.5" "pytest>=7" "pytest-xdist>=3"
    echo "nt-$(stamp)" > .venv-nt/.kip-stamp
  fi
fi
