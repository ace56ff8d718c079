"""benchmarks/device_check.sh runs end to end on the CPU, at tiny sizes."""

import json
import os
import re
import subprocess
import sys

from conftest import REPO
from fake_data import write_dataset

STAGES = ('data', 'bench_bfloat16_16', 'train_fmnist96')


def test_device_check_runs_end_to_end(tmp_path):
  source_dir = tmp_path / 'idx'
  source_dir.mkdir()
  write_dataset(source_dir)
  out = tmp_path / 'out'
  # Its subprocesses see one CPU device. Compiling takes most of the time, so
  # the network is conftest's one-block GoogLeNet, the benchmark runs in
  # bfloat16 only, one compilation cache serves every stage (training fmnist96
  # in bfloat16 loads the benchmark's steps), and the optional fmnist96_best,
  # a model of its own to compile, is skipped.
  env = dict(
      os.environ, PYTHON=sys.executable, OUT=str(out), SOURCE_DIR=str(source_dir),
      WHEELS_DIR=str(tmp_path / 'wheels'),  # None: the packages are installed.
      DATA_DIR=str(tmp_path / 'tfds'), WORK_DIR=str(tmp_path / 'work'),
      VERIFY_CHECKSUMS='false', DTYPES='bfloat16', BATCH_SIZES='16', WARMUP='1',
      STEPS='2', TRAIN_STEPS='2', BEST='false',
      STAGE_LIMITS='false',  # The limits are a GPU's: a busy CPU may take longer.
      BENCH_FLAGS='--matmul_size=256 --host_steps=5',
      CONFIG_FLAGS=(f'--config.model=googlenet_1block '
                    f'--config.image_size=32 --config.batch_size=16 '
                    f'--config.eval_batch_size=16 '
                    f'--config.conv_lowering=xla '
                    f'--config.compilation_cache_dir={tmp_path / "cache"}'),
      JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  result = subprocess.run(['bash', 'benchmarks/device_check.sh'], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr
  summary = (out / 'summary.txt').read_text()
  assert 'stage wheels: skipped, no ' in summary
  for stage in STAGES:
    assert re.search(rf'^stage {stage}: ok in \d+ s$', summary, re.M), (
        summary + (out / 'log.txt').read_text()[-3000:])
  results = json.loads((out / 'bench_bfloat16_16.json').read_text())['results']
  assert results['host_ms_per_step'] > 0
  assert results['pipeline_images_per_sec'] > 0
  assert results['compiled_needed_bytes'] > 0
  # A CPU reports no peak; a GPU's is set beside the compile's figure.
  assert re.search(r"^memory bfloat16, batch 16: the compile says \d+ MiB per device, "
                   r"the device's peak after the first step is not reported here$",
                   summary, re.M), summary
  lines = (out / 'fmnist96.metrics.jsonl').read_text().splitlines()
  assert 0 <= json.loads(lines[-1])['test_accuracy'] <= 1
  assert re.search(r'^fmnist96: \d+ s to epoch 1 \(step 2\), test accuracy', summary,
                   re.M), summary
