#!/bin/bash
# JAX vs the chapter's PyTorch GoogLeNet: training images/s, back to back, one FLOP count.
#
#   benchmarks/compare_pytorch.sh [OUT_DIR]
#
# Runs benchmarks/benchmark.py (float32, synthetic data only) then
# benchmarks/pytorch_reference.py with XLA's FLOPs per step, at the same batch,
# image size and step counts, and prints the ratio of their median images/s.
# Needs PyTorch in its own virtualenv (default /tmp/torch-venv, or $TORCH_PYTHON):
#   python3 -m venv /tmp/torch-venv && /tmp/torch-venv/bin/pip install torch==2.13.0 numpy
# BATCH_SIZE, IMAGE_SIZE, WARMUP, STEPS and PYTHON (.venv/bin/python) override the
# defaults below.
set -euo pipefail
cd "$(dirname "$0")/.."

out_dir="${1:-/tmp/compare_pytorch}"
torch_python="${TORCH_PYTHON:-/tmp/torch-venv/bin/python}"
batch_size="${BATCH_SIZE:-128}"
image_size="${IMAGE_SIZE:-96}"
warmup="${WARMUP:-2}"
steps="${STEPS:-5}"
# The project's virtual environment's Python where there is one (PEP 668
# machines refuse packages in the system's), else python3.
python="${PYTHON:-$(if [ -x .venv/bin/python ]; then echo .venv/bin/python; else echo python3; fi)}"
mkdir -p "$out_dir"

"$python" -m benchmarks.benchmark --config.dtype=float32 --batch_size="$batch_size" \
  --config.image_size="$image_size" --warmup="$warmup" --steps="$steps" \
  --noreal_data --json_out="$out_dir/jax.json"
flops=$("$python" -c "import json,sys; print(json.load(open(sys.argv[1]))['results']['flops'])" \
  "$out_dir/jax.json")
"$torch_python" benchmarks/pytorch_reference.py --batch_size="$batch_size" \
  --image_size="$image_size" --warmup="$warmup" --steps="$steps" \
  --flops_per_step="$flops" --json_out="$out_dir/pytorch.json"
"$python" - "$out_dir/jax.json" "$out_dir/pytorch.json" <<'EOF'
import json, sys
jax_rate = json.load(open(sys.argv[1]))['results']['train_synthetic']['median']
torch_rate = json.load(open(sys.argv[2]))['images_per_s']['median']
print(f'JAX {jax_rate:.1f} images/s, PyTorch {torch_rate:.1f} images/s, '
      f'JAX/PyTorch {jax_rate / torch_rate:.2f}')
EOF
