#!/bin/bash
# The device check: benchmarks/benchmark.py in float32 and bfloat16 at batch 128
# and 512, then configs/fmnist96.py (10 epochs) and configs/fmnist96_best.py
# (30 epochs) trained to the end in bfloat16, each with its wall time and final
# test accuracy. Run end to end on a CPU at tiny sizes by tests/test_benchmarks.py;
# not yet run on a GPU.
#
# Time: it fits a 15-minute GPU lease. The whole script stops itself after
# BUDGET_S (default 690 s), which leaves 3.5 minutes of the lease for the
# machine's start and the transfers; each stage runs under its own limit or what
# is left of BUDGET_S, whichever is less:
#   wheels                           60 s
#   data (prepare Fashion-MNIST)     90 s
#   4 benchmarks                     80 s each
#   fmnist96, 10 epochs             150 s
#   fmnist96_best, 30 epochs        what is left: at least 70 s, if every stage
#                                   above took its whole limit
# fmnist96_best is the optional stage: if it reaches its limit, main.py saves a
# checkpoint on the SIGTERM and summary.txt gives the epochs it finished.
#
# First, on a machine with PyPI: benchmarks/prepare_device_check.sh
# Then, on the GPU machine, from the repository root, carrying
# benchmarks/wheels and benchmarks/fashion-mnist:
#   bash benchmarks/device_check.sh
# Results go to $OUT (default /tmp/device_check), 8 files (all the device tool
# brings back): summary.txt, log.txt, bench_<dtype>_<batch>.json (4),
# fmnist96.metrics.jsonl, fmnist96_best.metrics.jsonl.
#
# The environment can shrink it (tests/test_benchmarks.py runs it on a CPU):
#   PYTHON (.venv/bin/python, else python3), WHEELS_DIR (benchmarks/wheels: none, none installed),
#   SOURCE_DIR (benchmarks/fashion-mnist: the IDX files),
#   DATA_DIR (/tmp/tensorflow_datasets), WORK_DIR (/tmp/device_check_work),
#   DTYPES ("float32 bfloat16": the benchmarks'), BATCH_SIZES ("128 512"),
#   WARMUP (3), STEPS (20), TRAIN_STEPS (-1: the configs' epochs),
#   VERIFY_CHECKSUMS (true), BENCH_FLAGS (--matmul_size=8192: more benchmark
#   flags), CONFIG_FLAGS (--config.x= overrides for every run), BUDGET_S (690),
#   BEST (true; false skips the optional fmnist96_best), STAGE_LIMITS (true;
#   false runs every stage to its end: the limits are a GPU lease's, and a CPU
#   at tiny sizes is slower than that).
# Every run shares the config's compilation cache, so training fmnist96 at
# batch 128 in bfloat16 loads the steps that its benchmark compiled.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${OUT:-/tmp/device_check}"
# The project's virtual environment's Python where there is one (PEP 668
# machines refuse packages in the system's), else python3.
python="${PYTHON:-$(if [ -x .venv/bin/python ]; then echo .venv/bin/python; else echo python3; fi)}"
source_dir="${SOURCE_DIR:-$PWD/benchmarks/fashion-mnist}"
data_dir="${DATA_DIR:-/tmp/tensorflow_datasets}"
work_dir="${WORK_DIR:-/tmp/device_check_work}"
wheels_dir="${WHEELS_DIR:-benchmarks/wheels}"
verify_checksums="${VERIFY_CHECKSUMS:-true}"
read -ra bench_flags <<<"${BENCH_FLAGS---matmul_size=8192}"
read -ra config_flags <<<"${CONFIG_FLAGS:-}"
deadline=$((SECONDS + ${BUDGET_S:-690}))
summary="$out/summary.txt"
log="$out/log.txt"
mkdir -p "$out" "$work_dir"
: >"$summary"
: >"$log"
export PYTHONUNBUFFERED=1
# Each process takes GPU memory as it needs it, so the peak it reports is its own.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

# Runs stage $1 under min($2 s, what is left of BUDGET_S), logging to log.txt;
# records "stage NAME: ok in N s" (or why not) in summary.txt, and the seconds
# it took in $stage_s. A failure is recorded, not fatal.
run_stage() {
  local name="$1" limit="$2" left=$((deadline - SECONDS)) start=$SECONDS rc=0
  shift 2
  if [[ "${STAGE_LIMITS:-true}" == false ]]; then
    limit=0  # timeout's "no limit".
  elif ((left < 10)); then
    echo "stage $name: skipped, BUDGET_S is spent" | tee -a "$summary"
    stage_s=0
    return 0
  elif ((limit > left)); then
    limit=$left
  fi
  echo "=== stage $name (limit $limit s; 0: none): $*" >>"$log"
  # SIGTERM at the limit: main.py then saves a checkpoint and stops.
  timeout -k 30 "$limit" "$@" >>"$log" 2>&1 || rc=$?
  stage_s=$((SECONDS - start))
  if ((rc == 0)); then
    echo "stage $name: ok in $stage_s s" | tee -a "$summary"
  elif ((rc == 124)); then
    echo "stage $name: stopped at its $limit s limit" | tee -a "$summary"
  else
    echo "stage $name: FAILED (rc $rc) after $stage_s s, see log.txt" | tee -a "$summary"
  fi
}

# The GPU image lacks some packages (prepare_device_check.sh); a machine that
# has them all (the CPU test) has no wheels to install.
shopt -s nullglob
wheels=("$wheels_dir"/*.whl)
if ((${#wheels[@]})); then
  run_stage wheels 60 "$python" -m pip install -q --no-index --no-deps \
    --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}"
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "stage wheels: skipped, no $wheels_dir/*.whl" | tee -a "$summary"
fi
command -v nvidia-smi >/dev/null &&
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    | tee -a "$summary" || true

# Prepared once here, so that no timed run below pays for it.
run_stage data 90 "$python" -c '
import sys
import flax, jax, optax, tensorflow_datasets as tfds
from googlenet_jax.data import fashion_mnist
summary, data_dir, source_dir, verify = sys.argv[1:]
with open(summary, "a") as f:
  print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__,
        "tfds", tfds.__version__, jax.devices(), file=f)
fashion_mnist.get_builder(data_dir, source_dir, verify == "true")
' "$summary" "$data_dir" "$source_dir" "$verify_checksums"

data=(--config.source_dir="$source_dir" --config.data_dir="$data_dir"
      --config.verify_checksums="$verify_checksums")
for dtype in ${DTYPES:-float32 bfloat16}; do
  for batch_size in ${BATCH_SIZES:-128 512}; do
    run_stage "bench_${dtype}_${batch_size}" 80 "$python" -m benchmarks.benchmark \
      "${data[@]}" --config.dtype="$dtype" --batch_size="$batch_size" \
      --warmup="${WARMUP:-3}" --steps="${STEPS:-20}" "${bench_flags[@]}" \
      "${config_flags[@]}" --json_out="$out/bench_${dtype}_${batch_size}.json"
  done
done
"$python" - "$out"/bench_*.json <<'EOF' | tee -a "$summary" || true
import json, sys
for path in sys.argv[1:]:
  run = json.load(open(path))
  info, r = run['info'], run['results']
  synthetic = r['train_synthetic']['median']
  print(f"bench {info['dtype']}, batch {info['batch_size']}: train {synthetic:.0f} "
        f"images/s (real data {r['train_real']['median'] / synthetic:.3f} of it), "
        f"pipeline {r['pipeline_images_per_sec']:.0f} images/s, host "
        f"{r['host_ms_per_step']:.2f} ms/step, first step {r['time_to_first_step_s']:.1f}"
        f" s, {r['achieved_flops_per_s'] / 1e12:.3g} TFLOP/s = "
        f"{100 * r['achieved_flops_per_s'] / r['matmul_peak_flops']:.1f}% of the "
        f"{info['dtype']} matmul peak ({r['matmul_peak_flops'] / 1e12:.3g} TFLOP/s), "
        f"eval {r['eval']['median']:.0f} images/s")
  # The first step's peak against the compiled step's memory analysis: the
  # check of --mode=compile's GPU figures (cuDNN's workspaces are not in them).
  need, peak = r['compiled_needed_bytes'], r['first_step_device_peak_bytes']
  print(f"memory {info['dtype']}, batch {info['batch_size']}: the compile says "
        f"{need / 2**20:.0f} MiB per device, the device's peak after the first step " +
        ('is not reported here' if peak is None
         else f"was {peak / 2**20:.0f} MiB ({peak / need:.2f} of it)"))
EOF

# Trains $1 (a config name) in bfloat16 under a $2 s limit; summary.txt gets
# its wall time and last epoch's test accuracy, from metrics.jsonl.
train() {
  local name="$1" limit="$2" workdir="$work_dir/$1"
  rm -rf "$workdir"
  run_stage "train_$name" "$limit" "$python" main.py --config="configs/$name.py" \
    --workdir="$workdir" "${data[@]}" --config.dtype=bfloat16 \
    --config.num_train_steps="${TRAIN_STEPS:--1}" "${config_flags[@]}"
  cp "$workdir/metrics.jsonl" "$out/$name.metrics.jsonl" 2>/dev/null || return 0
  "$python" - "$out/$name.metrics.jsonl" "$name" "$stage_s" <<'EOF' | tee -a "$summary" || true
import json, sys
path, name, seconds = sys.argv[1:]
epochs = [json.loads(line) for line in open(path)]
if epochs:
  last = epochs[-1]
  print(f"{name}: {seconds} s to epoch {last['epoch']} (step {last['step']}), "
        f"test accuracy {last['test_accuracy']:.4f}, "
        f"{last['train_images_per_sec']:.0f} train images/s in the last epoch")
else:
  print(f"{name}: no epoch finished in {seconds} s")
EOF
}
train fmnist96 150
if [[ "${BEST:-true}" == true ]]; then
  train fmnist96_best 100000  # Whatever is left.
else
  echo "stage train_fmnist96_best: skipped, BEST=$BEST" | tee -a "$summary"
fi
