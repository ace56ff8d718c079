"""Runs as on a TPU pod: a gs:// workdir on a real GCS server (127.0.0.1), hosts that
join, agree on their step and stop together, and a clear error instead of a hang.
"""

import io
import json
import os
import shutil
import signal
import time

import chex
from etils import epath
import jax
import jax.numpy as jnp
from matplotlib import image as mpimg
import numpy as np
import pytest

from conftest import REPO, start_main
from gcs_server import free_port
from googlenet_jax import evaluate
from googlenet_jax import experiment
from googlenet_jax import predict
from googlenet_jax import sharding
from googlenet_jax import train
from googlenet_jax.errors import UserError
from googlenet_jax.runtime import distributed
from googlenet_jax.runtime import jax_internals
from googlenet_jax.runtime import workdirs


def wait_for_step(process, gcs, workdir: str, step: int, timeout=240) -> None:
  deadline = time.monotonic() + timeout
  while not any(s >= step for s in gcs.committed_steps(workdir)):
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert time.monotonic() < deadline, f'no checkpoint of step {step} in time'
    time.sleep(0.05)


def test_a_run_in_a_bucket_is_killed_resumes_bit_exactly_and_is_evaluated(
    config, trained, gcs, bucket):
  workdir = f'{bucket}/run'
  process = start_main(workdir, config, '--config.checkpoint_every_steps=1')
  wait_for_step(process, gcs, workdir, 1)
  # Another process evaluates the bucket's latest checkpoint while it trains.
  evaluator = start_main(workdir, config, '--mode=eval')
  wait_for_step(process, gcs, workdir, 2)
  process.send_signal(signal.SIGKILL)  # No chance to save.
  process.communicate()
  killed_at = gcs.committed_steps(workdir)[-1]
  assert 2 <= killed_at < 6
  stdout, stderr = evaluator.communicate(timeout=240)
  assert evaluator.returncode == 0, stderr[-3000:]
  assert 'Checkpoint at step ' in stdout
  # Resumed (here, in process) it ends where the uninterrupted run does, to the bit.
  resumed = sharding.unreplicate(train.train_and_evaluate(experiment.build(config), workdir))
  expected = sharding.unreplicate(trained[1])
  assert int(resumed.step) == int(expected.step) == 6
  chex.assert_trees_all_equal(resumed.params, expected.params)
  chex.assert_trees_all_equal(resumed.opt_state, expected.opt_state)
  # What the run leaves is in the bucket: every epoch once, curves, TensorBoard events.
  run = epath.Path(workdir)
  records = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
  assert [r['epoch'] for r in records] == [1, 2]
  assert mpimg.imread(io.BytesIO((run / 'curves.png').read_bytes())).ndim == 3
  assert any(p.name.startswith('events.out.tfevents') for p in run.iterdir())
  # Evaluated and predicted from the bucket.
  result = evaluate.evaluate_checkpoint(experiment.build_inference(config, workdir), workdir)
  assert result['step'] == 6
  assert json.loads((run / 'eval.json').read_text())['accuracy'] == result['accuracy']
  path = predict.predict_checkpoint(experiment.build_inference(config, workdir), workdir)
  assert path == f'{workdir}/predictions.png'
  assert mpimg.imread(io.BytesIO(epath.Path(path).read_bytes())).shape[2] in (3, 4)
  assert not os.path.exists(os.path.join(REPO, 'gs:'))  # Nothing written locally.


def test_a_bucket_that_does_not_exist_is_one_line_before_any_work(gcs):
  with pytest.raises(UserError, match='Cannot write to the workdir gs://no-such-bucket/run '
                                      r'\(FileNotFoundError: .*\): choose another'):
    workdirs.create('gs://no-such-bucket/run')


def start_hosts(host_workdirs, config, *args):
  """One main.py process of 4 CPU devices per workdir, joined through gloo."""
  address = f'127.0.0.1:{free_port()}'
  return [start_main(workdir, config, f'--coordinator_address={address}',
                     f'--num_processes={len(host_workdirs)}', f'--process_id={i}', *args,
                     num_devices=4)
          for i, workdir in enumerate(host_workdirs)]


def test_hosts_with_workdirs_of_their_own_stop_at_once_with_one_line(config, trained,
                                                                      tmp_path):
  # Host 0's workdir holds the finished run's checkpoint, host 1's is empty.
  shutil.copytree(trained[0], tmp_path / 'host0')
  processes = start_hosts([tmp_path / 'host0', tmp_path / 'host1'], config)
  for process in processes:
    _, stderr = process.communicate(timeout=120)  # Not a hang.
    assert process.returncode == 1, stderr[-3000:]
    assert 'Traceback' not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith('Error:')]
    assert len(lines) == 1, stderr[-3000:]
    assert 'process 0: step 6, process 1: step 0' in lines[0], lines[0]
    assert 'shared by all hosts, e.g. a gs:// bucket' in lines[0], lines[0]
  assert not (tmp_path / 'host1' / 'checkpoints').exists() or not any(
      (tmp_path / 'host1' / 'checkpoints').iterdir())


def test_several_processes_without_a_distributed_client_are_refused(monkeypatch):
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(jax.distributed, 'is_initialized', lambda: False)
  with pytest.raises(UserError, match='no jax.distributed client joins them'):
    distributed.initialize()


def test_every_process_writes_its_compiled_programs_to_the_cache(monkeypatch):
  # Process 1 of a run (the id JAX's cache write checks); the cache is the session's.
  monkeypatch.setattr(jax_internals.distributed.global_state, 'process_id', 1)
  cache = epath.Path(jax.config.jax_compilation_cache_dir)
  before = set(cache.iterdir())
  offset = time.time()  # A program that no earlier session has compiled.
  def scale_and_shift(x):
    return x * 3.0 + offset
  min_seconds = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  try:
    jax.jit(scale_and_shift).lower(jnp.arange(7.0)).compile()
  finally:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', min_seconds)
  written = [p.name for p in set(cache.iterdir()) - before]
  assert any(name.startswith('jit_scale_and_shift-') for name in written), written


def test_hosts_started_with_different_configs_are_refused(config, monkeypatch):
  other = config.copy_and_resolve_references()
  other.learning_rate *= 2
  text = lambda c: experiment.build(c, load_data=False).config_text
  digests = [distributed.config_digest(text(c)) for c in (config, other)]
  assert digests[0] == distributed.config_digest(text(config.copy_and_resolve_references()))
  config_text = text(config)
  assert digests[0] != digests[1]
  # What process_allgather returns to both processes: the same step, two configs.
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(distributed.multihost_utils, 'process_allgather',
                      lambda mine: np.array([[3, digests[0]], [3, digests[1]]], np.int32))
  with pytest.raises(UserError, match='The config of process 1 differs from that of '
                                      'process 0: run the same command'):
    distributed.check_hosts_agree(3, config_text, 'gs://b/run')
