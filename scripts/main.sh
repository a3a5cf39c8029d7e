#!/usr/bin/env bash
# The main job: a default KIP distillation of Fashion-MNIST on the CPU (FC kernel of depth 3, 10 images per
# class, learned labels), evaluated by kernel ridge regression on the 10,000 test images.
# Output in runs/fashion_mnist_kip_fc_ipc10/ (distilled.npz, distilled.png, summary.json, kip.log); when
# that folder already holds a run, a new one (…-2, …-3) is used unless you pass --resume or --overwrite.
# Extra arguments are passed to `kip distill` (e.g. --steps 200, --resume).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh main
out=runs/fashion_mnist_kip_fc_ipc10
case " $* " in
  *" --resume "*|*" --overwrite "*|*" --out "*) ;;
  *) i=1; base=$out
     while [ -e "$out/distilled.npz" ] || [ -e "$out/checkpoint.npz" ]; do i=$((i + 1)); out=$base-$i; done
     [ "$out" = "$base" ] || echo "[main] $base holds an earlier run; writing to $out" >&2 ;;
esac
exec .venv/bin/kip distill --dataset fashion_mnist --kernel fc --depth 3 --lr 0.04 --support-size 100 \
  --steps 1000 --eval-every 100 --out "$out" "$@"
