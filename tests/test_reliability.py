"""Preemption, kill-and-resume, several hosts, divergence and bad input.

Kills and preemptions run main.py in subprocesses, as a scheduler would start
and kill them, against runs in this process; bad input is checked in process,
and main.py's one-line error format once for each way it reports one.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

import cloud_tpu_vm
from conftest import REPO, run_main, start_main
from compare_runs import update_difference
from fake_data import NUM_TEST
from gcs_server import free_port
from googlenet_jax import evaluate
from googlenet_jax import experiment
from googlenet_jax import input_pipeline
from googlenet_jax import sharding
from googlenet_jax import train
from googlenet_jax import validation
from googlenet_jax.errors import UserError
from googlenet_jax.runtime import checkpoint

NUM_EPOCHS = 4  # 12 steps of 16 examples: long enough to kill in the middle.
AGENT_WORKER_NUMBER = '/computeMetadata/v1/instance/attributes/agent-worker-number'


def final_state(config, workdir):
  """The latest checkpoint in `workdir`, as host arrays."""
  built = experiment.build(config, load_data=False)
  directory, steps = checkpoint.find_steps(workdir)
  return jax.device_get(checkpoint.restore(directory, steps, built.abstract_state(),
                                           built.record, resume=True)[1])


def finished_steps(workdir) -> list[int]:
  """Steps with a complete checkpoint (Orbax renames a step when it is whole)."""
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def signal_after_checkpoint(process, workdir, step, *signals, timeout=240):
  """Sends `signals`, 50 ms apart, to `process` once the checkpoint of `step` exists."""
  deadline = time.monotonic() + timeout
  while not any(s >= step for s in finished_steps(workdir)):
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert time.monotonic() < deadline, 'no checkpoint in time'
    time.sleep(0.02)
  assert process.poll() is None, 'the run ended before it could be interrupted'
  for sig in signals:
    process.send_signal(sig)
    time.sleep(0.05)
  _, stderr = process.communicate(timeout=timeout)
  return process.returncode, stderr


@pytest.fixture(scope='module')
def long_config(config):
  long = config.copy_and_resolve_references()
  long.num_epochs = NUM_EPOCHS
  return long


@pytest.fixture(scope='module')
def uninterrupted(long_config, tmp_path_factory):
  """The workdir and final state of the run that the interrupted ones must end with."""
  workdir = tmp_path_factory.mktemp('whole')
  return workdir, train.train_and_evaluate(experiment.build(long_config), str(workdir))


def epoch_metrics(workdir) -> list[dict]:
  """Each line of metrics.jsonl without its speed, which no two runs share."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(line) for line in f]
  return [{k: v for k, v in line.items() if k != 'train_images_per_sec'} for line in lines]


@pytest.mark.xdist_group('uninterrupted')  # One worker computes the fixture.
def test_a_killed_then_preempted_run_resumes_bit_exactly(long_config, uninterrupted,
                                                         tmp_path):
  # Killed (SIGKILL: no chance to save) once its step-2 checkpoint exists.
  process = start_main(tmp_path, long_config, '--config.checkpoint_every_steps=1')
  signal_after_checkpoint(process, tmp_path, 2, signal.SIGKILL)
  killed_at = finished_steps(tmp_path)[-1]
  # Resumed, with checkpoints at epoch ends only, then preempted once it has
  # saved one: SIGTERM saves the current step. The second and third signals
  # arrive while that checkpoint is saved.
  process = start_main(tmp_path, long_config)
  returncode, stderr = signal_after_checkpoint(
      process, tmp_path, killed_at + 1, signal.SIGTERM, signal.SIGTERM, signal.SIGINT)
  assert returncode == 0, stderr[-3000:]
  stopped_at = finished_steps(tmp_path)[-1]
  assert killed_at < stopped_at < 12
  assert f'Stopped at step {stopped_at} ' in stderr
  # Resumed again, it ends where the uninterrupted run does, to the bit.
  result = run_main(tmp_path, long_config)
  assert result.returncode == 0, result.stderr[-3000:]
  whole_workdir, whole = uninterrupted
  resumed = final_state(long_config, tmp_path)
  assert int(resumed.step) == 12
  chex.assert_trees_all_equal(resumed.params, sharding.unreplicate(whole.params))
  chex.assert_trees_all_equal(resumed.opt_state, sharding.unreplicate(whole.opt_state))
  # Each epoch is reported once, the resumed ones with the train metrics of
  # all their steps, as in the run that never stopped.
  assert epoch_metrics(tmp_path) == epoch_metrics(whole_workdir)


@pytest.mark.xdist_group('uninterrupted')  # One worker computes the fixture.
def test_a_half_written_checkpoint_is_skipped(long_config, uninterrupted, tmp_path):
  short = long_config.copy_and_resolve_references()
  short.num_train_steps = 3
  train.train_and_evaluate(experiment.build(short), str(tmp_path))
  # What a kill in the middle of Orbax's write of step 4 leaves behind.
  partial = tmp_path / 'checkpoints' / '4.orbax-checkpoint-tmp-1234'
  shutil.copytree(tmp_path / 'checkpoints' / '3', partial)
  for path in partial.rglob('*'):
    if path.is_file():
      path.write_bytes(path.read_bytes()[:7])
  train.train_and_evaluate(experiment.build(long_config), str(tmp_path))
  assert not partial.exists()  # Removed when the training started.
  resumed = final_state(long_config, tmp_path)
  chex.assert_trees_all_equal(resumed.params, sharding.unreplicate(uninterrupted[1].params))


def start_tpu_slice(hosts, workdir, config, *args):
  """main.py on each simulated host of a Cloud TPU slice, 4 CPU devices each.

  No multi-process flag: JAX's GceTpuCluster finds the hosts, their number and
  each one's id on its metadata server, and JAX_COORDINATOR_PORT (JAX's own
  setting) moves its coordinator off port 8482 to a free one.
  """
  port = free_port()
  return [start_main(workdir, config, *args, num_devices=4,
                     tpu_vm_env=host.environ(port)) for host in hosts]


def test_2_tpu_vm_hosts_join_stop_resume_and_train_like_1_of_8(long_config, tmp_path,
                                                               gcs, bucket):
  short = long_config.copy_and_resolve_references()
  short.num_train_steps = 6
  workdir = f'{bucket}/two_hosts'  # Shared by the hosts, as on a pod.
  hosts = cloud_tpu_vm.slice_of_hosts(2, tmp_path)
  try:
    # Stopped on one host: SIGTERM on host 1 only (a preemption notice, or
    # Autocheckpoint's signal), to JAX's preemption sync, stops both at one
    # checkpointed step.
    processes = start_tpu_slice(hosts, workdir, short, '--config.checkpoint_every_steps=1')
    while 1 not in gcs.committed_steps(workdir):
      for process in processes:  # A host that ended early says why.
        assert process.poll() is None, process.communicate()[1][-3000:]
      time.sleep(0.02)
    processes[1].send_signal(signal.SIGTERM)
    stderrs = [process.communicate(timeout=300)[1] for process in processes]
    for process, stderr in zip(processes, stderrs):
      assert process.returncode == 0, stderr[-3000:]
    stopped_at = gcs.committed_steps(workdir)[-1]
    assert stopped_at < 6, stderrs[1][-3000:]
    for stderr in stderrs:
      assert f'Stopped at step {stopped_at} ' in stderr
    for host in hosts:  # They joined through the metadata, as on a TPU VM.
      assert AGENT_WORKER_NUMBER in host.metadata.requests
    # Resumed on two hosts with --coordinator_address alone, at another port than
    # JAX's (as a firewall may need): JAX still takes each host's id from the
    # metadata. It ends like one host with all 8 devices (this one).
    address = f'127.0.0.1:{free_port()}'
    for process in start_tpu_slice(hosts, workdir, short, f'--coordinator_address={address}'):
      _, stderr = process.communicate(timeout=300)
      assert process.returncode == 0, stderr[-3000:]
      assert f'Connecting to JAX distributed service on {address}' in stderr
  finally:
    for host in hosts:
      host.stop()
  one = sharding.unreplicate(
      train.train_and_evaluate(experiment.build(short), str(tmp_path / 'one_host')))
  two = final_state(short, workdir)
  assert int(two.step) == int(one.step) == 6
  # gloo sums the gradients in another order than one process does: compare
  # the whole update, as compare_runs explains, not each element.
  initial = experiment.build(short).initial_state()
  assert update_difference(two.params, one.params, initial.params) < 0.01
  # The 2-process checkpoint evaluates in one process.
  evaluated = evaluate.evaluate_checkpoint(experiment.build_inference(short, workdir), workdir)
  assert (evaluated['step'], evaluated['num_examples']) == (6, NUM_TEST)


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(config, tmp_path,
                                                                 monkeypatch):
  good = config.copy_and_resolve_references()
  good.num_train_steps = 2
  good.checkpoint_every_steps = 1
  train.train_and_evaluate(experiment.build(good), str(tmp_path))
  before = final_state(config, tmp_path)
  # From here the loss is NaN: labels past the last class pick no logit (the
  # same compiled step as above; an infinite learning rate would compile one).
  real_batches = input_pipeline.train_batches
  def nan_loss_batches(*args, **kwargs):
    for batch in real_batches(*args, **kwargs):
      yield dict(batch, label=np.full_like(batch['label'], 10))  # Fashion-MNIST's 10.
  monkeypatch.setattr(input_pipeline, 'train_batches', nan_loss_batches)
  diverging = good.copy_and_resolve_references()
  diverging.num_train_steps = 4
  with pytest.raises(UserError) as error:
    train.train_and_evaluate(experiment.build(diverging), str(tmp_path))
  assert 'not finite at step 3' in str(error.value)
  assert 'last good checkpoint is step 2' in str(error.value)
  assert finished_steps(tmp_path) == [1, 2]
  chex.assert_trees_all_equal(final_state(config, tmp_path).params, before.params)


def error_line(result) -> str:
  """The single `Error:` line of a failed run, checking there is nothing else."""
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith('Error:')]
  assert len(lines) == 1, result.stderr[-3000:]
  return lines[0]


@pytest.mark.parametrize('args, expected', [
    (['--config.no_such_field=1'], 'Unknown config field'),  # absl's flag parser.
    (['--config.num_epochs=0'], 'num_epochs must be positive'),  # A UserError.
])
def test_main_reports_bad_input_in_one_line(config, tmp_path, args, expected):
  line = error_line(run_main(tmp_path, config, *args, num_devices=1))
  assert expected in line, line


def test_missing_config_file_is_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/no_such.py',
       f'--workdir={tmp_path}'], cwd=REPO, capture_output=True, text=True)
  assert 'configs/no_such.py' in error_line(result)


def test_wrong_type_is_reported_by_the_flag_parser(config, tmp_path):
  result = run_main(tmp_path, config, '--config.batch_size=many', num_devices=1)
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr
  assert "flag --config.batch_size=many" in result.stderr


@pytest.mark.parametrize('overrides, expected', [
    ({'model': 'resnet'}, "Unknown config.model 'resnet'"),
    ({'num_epochs': 0}, 'num_epochs must be positive'),
    ({'num_train_steps': 0}, 'num_train_steps must be -1 or positive'),
    ({'batch_size': -16}, 'batch_size must be positive'),
    ({'learning_rate': 0.0}, 'learning_rate must be positive'),
    ({'model': 'inception_v3', 'image_size': 32}, 'smallest working image size is 43'),
    ({'dtype': 'float16'}, "Unknown config.dtype 'float16'"),
    ({'schedule': 'step'}, "Unknown config.schedule 'step'"),
    ({'checkpoint_every_minutes': -1.0}, 'checkpoint_every_minutes must be 0'),
])
def test_bad_config_is_refused_in_one_line(config, overrides, expected):
  bad = config.copy_and_resolve_references()
  bad.update(overrides)
  with pytest.raises(UserError, match=expected) as error:
    validation.check_config(bad)
  assert '\n' not in str(error.value)


def test_missing_data_names_the_package_to_install_and_writes_no_workdir(config,
                                                                         tmp_path):
  missing = config.copy_and_resolve_references()
  missing.source_dir, missing.data_dir = '/nonexistent', str(tmp_path / 'tfds')
  with pytest.raises(UserError, match='apt-get install dataset-fashion-mnist'):
    train.train_and_evaluate(experiment.build(missing), str(tmp_path / 'workdir'))
  assert not os.path.exists(tmp_path / 'workdir')


def test_truncated_idx_file_names_the_file(config, tmp_path):
  source = tmp_path / 'idx'
  shutil.copytree(config.source_dir, source)
  labels = source / 'train-labels-idx1-ubyte.gz'
  labels.write_bytes(labels.read_bytes()[:20])
  truncated = config.copy_and_resolve_references()
  truncated.source_dir, truncated.data_dir = str(source), str(tmp_path / 'tfds')
  with pytest.raises(UserError, match='train-labels-idx1-ubyte'):
    experiment.load_dataset(truncated)


@pytest.fixture(scope='module')
def one_step_workdir(config, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('one_step')
  one_step = config.copy_and_resolve_references()
  one_step.num_train_steps = 1
  train.train_and_evaluate(experiment.build(one_step), str(workdir))
  return workdir


def test_checkpoint_of_another_image_size_is_refused(config, one_step_workdir):
  before = finished_steps(one_step_workdir)
  other_size = config.copy_and_resolve_references()
  other_size.image_size = 64
  with pytest.raises(UserError, match='config.image_size is 64, but the checkpoint at '
                     'step 1 in .* was written with image_size=32'):
    train.train_and_evaluate(experiment.build(other_size), str(one_step_workdir))
  assert finished_steps(one_step_workdir) == before


def test_truncated_checkpoint_file_is_a_user_error(config, one_step_workdir, tmp_path):
  workdir = tmp_path / 'w'
  shutil.copytree(one_step_workdir, workdir)
  for path in (workdir / 'checkpoints' / '1' / 'state').rglob('*'):
    if path.is_file() and path.stat().st_size > 100:
      path.write_bytes(path.read_bytes()[:50])
  with pytest.raises(UserError,
                     match=r'No checkpoint in .* can be read \(steps 1; step 1: '):
    evaluate.evaluate_checkpoint(experiment.build_inference(config, str(workdir)), str(workdir))


def test_unwritable_workdir_is_a_user_error(config, tmp_path):
  not_a_directory = tmp_path / 'file'
  not_a_directory.write_text('')
  with pytest.raises(UserError, match='Cannot write to the workdir'):
    train.train_and_evaluate(experiment.build(config), str(not_a_directory / 'workdir'))
