#!/bin/bash
# GPU check in about 6 minutes: the benchmark in float32 and bfloat16 at batch 128
# and 512, then the chapter's fmnist96 recipe (10 epochs) with wall time and
# test accuracy. Untested on a GPU so far.
#
# First, on a machine with PyPI: benchmarks/prepare_device_check.sh
# Then, on the GPU machine, from the repository root, carrying
# benchmarks/wheels and benchmarks/fashion-mnist:
#   bash benchmarks/device_check.sh
# Results go to $OUT (default /tmp/device_check): bench_<dtype>_<batch>.json,
# bench.log, train.log, metrics.jsonl, summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${OUT:-/tmp/device_check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
# Each process takes GPU memory as it needs it, so the peak it reports is its own.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target /tmp/site benchmarks/wheels/*.whl
export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
python3 -c 'import jax, flax, optax, orbax.checkpoint as o, tensorflow_datasets as t
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__,
      "tfds", t.__version__, jax.devices())' | tee "$out/summary.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  | tee -a "$out/summary.txt" || true

source_dir="$PWD/benchmarks/fashion-mnist"
data_dir=/tmp/tensorflow_datasets
data=(--config.source_dir="$source_dir" --config.data_dir="$data_dir")

# Runs "$@" under a time limit, logging to $log; a failure is recorded, not fatal.
run_logged() {
  local limit="$1" log="$2"
  shift 2
  local start=$SECONDS
  if timeout "$limit" "$@" >>"$log" 2>&1; then
    echo "ok in $((SECONDS - start)) s: $*" | tee -a "$out/summary.txt"
  else
    echo "FAILED (rc $?) after $((SECONDS - start)) s: $*" | tee -a "$out/summary.txt"
  fi
}

# Prepared once here, so that no timed run below pays for it.
run_logged 60 "$out/data.log" python3 -c "from googlenet_jax.data import fashion_mnist
fashion_mnist.get_builder('$data_dir', '$source_dir')"

for dtype in float32 bfloat16; do
  for batch_size in 128 512; do
    run_logged 50 "$out/bench.log" python3 -m benchmarks.benchmark "${data[@]}" \
      --dtype="$dtype" --batch_size="$batch_size" --warmup=3 --steps=20 \
      --json_out="$out/bench_${dtype}_${batch_size}.json"
  done
done
grep -E '^(device|batch|compile|time to|train images|real /|pipeline|eval|GFLOP|achieved|matmul|% of|host|device peak|load average)' \
  "$out/bench.log" >>"$out/summary.txt" || true

rm -rf /tmp/fmnist96
run_logged 140 "$out/train.log" python3 main.py --config=configs/fmnist96.py \
  --workdir=/tmp/fmnist96 "${data[@]}"
cp /tmp/fmnist96/metrics.jsonl "$out/" 2>/dev/null || true
grep -E 'epoch|accuracy|Error' "$out/train.log" | tail -12 >>"$out/summary.txt" || true
cat "$out/summary.txt"
