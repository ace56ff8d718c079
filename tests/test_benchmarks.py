"""benchmarks/device_check.sh runs end to end on the CPU, at tiny sizes."""

import json
import os
import re
import subprocess
import sys

from conftest import REPO
from fake_data import write_dataset

STAGES = ('data', 'bench_bfloat16_16', 'train_fmnist96', 'train_fmnist96_best')


def test_device_check_runs_every_stage(tmp_path):
  source_dir = tmp_path / 'idx'
  source_dir.mkdir()
  write_dataset(source_dir)
  out = tmp_path / 'out'
  # Its subprocesses see one CPU device. Compiling takes most of the time: the
  # benchmark runs in bfloat16 only, and one compilation cache serves every
  # stage, so training fmnist96 (in bfloat16) reuses the benchmark's steps.
  env = dict(
      os.environ, PYTHON=sys.executable, OUT=str(out), SOURCE_DIR=str(source_dir),
      DATA_DIR=str(tmp_path / 'tfds'), WORK_DIR=str(tmp_path / 'work'),
      VERIFY_CHECKSUMS='false', DTYPES='bfloat16', BATCH_SIZES='16', WARMUP='1', STEPS='2',
      TRAIN_STEPS='2', BENCH_FLAGS='--matmul_size=256 --host_steps=5',
      CONFIG_FLAGS=(f'--config.image_size=32 --config.batch_size=16 '
                    f'--config.eval_batch_size=16 '
                    f'--config.conv_lowering=xla '
                    f'--config.compilation_cache_dir={tmp_path / "cache"}'),
      JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  result = subprocess.run(['bash', 'benchmarks/device_check.sh'], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr
  summary = (out / 'summary.txt').read_text()
  for stage in STAGES:
    assert re.search(rf'^stage {stage}: ok in \d+ s$', summary, re.M), (
        summary + (out / 'log.txt').read_text()[-3000:])
  results = json.loads((out / 'bench_bfloat16_16.json').read_text())['results']
  assert results['host_ms_per_step'] > 0
  assert results['pipeline_images_per_sec'] > 0
  for name in ('fmnist96', 'fmnist96_best'):
    lines = (out / f'{name}.metrics.jsonl').read_text().splitlines()
    assert 0 <= json.loads(lines[-1])['test_accuracy'] <= 1
    assert re.search(rf'^{name}: \d+ s to epoch 1 \(step 2\), test accuracy', summary,
                     re.M), summary
