"""Faults that must lose nothing: a second training on a workdir, a damaged
checkpoint, a config changed on resume. (A full disk and other OS errors: test_loop.py.)

Each fault is real: two processes, a checkpoint file overwritten with garbage
or one flipped bit, a real momentum or batch size change.
"""

import json
import logging
import os
import shutil
import time

import numpy as np
import pytest

from conftest import start_main
from googlenet_jax import experiment
from googlenet_jax import train
from googlenet_jax.errors import UserError


def steps_on_disk(workdir) -> list[str]:
  """The names in the checkpoint directory: steps, damaged steps, temporary ones."""
  return sorted(os.listdir(os.path.join(workdir, 'checkpoints')))


def logged_steps(workdir) -> list[int]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line)['step'] for line in f]


def largest_array_file(step_dir):
  """The step's biggest OCDBT data file: most of the parameters."""
  files = [p for p in step_dir.rglob('*') if p.is_file()]
  return max(files, key=lambda p: p.stat().st_size)


@pytest.fixture(scope='module')
def contested_run(config, tmp_path_factory):
  """A main.py training of two steps, each checkpointed, and a second training
  of its workdir started in this process while it runs.

  Returns:
    (its workdir, its process, its stderr, the second training's UserError).
  """
  workdir = tmp_path_factory.mktemp('contested')
  holder = start_main(workdir, config, '--config.num_train_steps=2',
                      '--config.checkpoint_every_steps=1')
  lock = workdir / 'train.lock'
  deadline = time.monotonic() + 120
  while f'pid {holder.pid} ' not in (lock.read_text() if lock.exists() else ''):
    assert holder.poll() is None, holder.communicate()[1][-3000:]
    assert time.monotonic() < deadline, 'the first training never took the lock'
    time.sleep(0.02)
  with pytest.raises(UserError) as refusal:
    train.train_and_evaluate(experiment.build(config), str(workdir))
  assert holder.poll() is None, 'the refusal came after the first training ended'
  _, stderr = holder.communicate(timeout=300)
  return workdir, holder, stderr, refusal.value


def test_a_second_training_on_a_live_workdir_stops_at_once(contested_run):
  workdir, holder, stderr, refusal = contested_run
  assert str(refusal).startswith(
      f'The workdir {workdir} is in use by another training (pid {holder.pid} on '
      'host '), refusal
  assert '\n' not in str(refusal)
  # The first run is whole: its epoch logged once, its checkpoints in place.
  assert holder.returncode == 0, stderr[-3000:]
  assert logged_steps(workdir) == [2]
  assert steps_on_disk(workdir) == ['1', '2']


@pytest.fixture
def two_step_workdir(contested_run, tmp_path):
  """A copy of the contested run's workdir: checkpoints of steps 1 and 2, and a
  train.lock naming a process that has ended (it never blocks a training)."""
  workdir = tmp_path / 'w'
  shutil.copytree(contested_run[0], workdir)
  return workdir


def test_a_damaged_latest_checkpoint_is_moved_aside_and_training_resumes_before_it(
    config, two_step_workdir, caplog):
  workdir = two_step_workdir
  garbage = np.random.default_rng(0).bytes(
      largest_array_file(workdir / 'checkpoints' / '2').stat().st_size)
  largest_array_file(workdir / 'checkpoints' / '2').write_bytes(garbage)
  caplog.set_level(logging.WARNING)
  # Eval, a reader, uses step 1, says why, and moves nothing.
  assert experiment.build_inference(config, str(workdir)).state.step == 1
  assert 'The checkpoint at step 2 cannot be read' in caplog.text
  assert 'using step 1' in caplog.text
  assert steps_on_disk(workdir) == ['1', '2']
  # Training resumes from step 1; its new step 2 does not replace the damaged one.
  three_steps = config.copy_and_resolve_references()
  three_steps.num_train_steps = 3
  three_steps.checkpoint_every_steps = 1
  caplog.clear()
  train.train_and_evaluate(experiment.build(three_steps), str(workdir))
  assert 'The checkpoint at step 2 cannot be read' in caplog.text
  assert 'resuming from step 1' in caplog.text
  # A change that can continue is logged.
  assert 'with config.num_train_steps=3 (it was written with 2)' in caplog.text
  names = steps_on_disk(workdir)
  assert names[:3] == ['1', '2', '2.damaged-' + names[2].split('-', 1)[1]], names
  assert names[3:] == ['3']
  assert largest_array_file(workdir / 'checkpoints' / names[2]).read_bytes() == garbage
  # One flipped bit in the newest step is caught by its checksum.
  data = bytearray(largest_array_file(workdir / 'checkpoints' / '3').read_bytes())
  data[len(data) // 2] ^= 0x10
  largest_array_file(workdir / 'checkpoints' / '3').write_bytes(bytes(data))
  caplog.clear()
  assert experiment.build_inference(config, str(workdir)).state.step == 2
  assert ('step 3 cannot be read (its arrays do not match their checksum)'
          in caplog.text)


@pytest.mark.parametrize('field, new, saved', [
    ('momentum', 0.9, 0.0),  # Another optimizer state.
    ('batch_size', 8, 16),  # Step 2 would be another place in the epoch.
])
def test_a_config_change_that_cannot_continue_is_named(config, two_step_workdir, field,
                                                       new, saved):
  before = steps_on_disk(two_step_workdir)
  changed = config.copy_and_resolve_references()
  changed[field] = new
  changed.num_train_steps = 3
  with pytest.raises(UserError) as error:
    train.train_and_evaluate(experiment.build(changed), str(two_step_workdir))
  message = str(error.value)
  assert (f'config.{field} is {new!r}, but the checkpoint at step 2 in '
          f'{two_step_workdir}/checkpoints was written with {field}={saved!r}: run with '
          f'--config.{field}={saved}, or train with the new value in another '
          '--workdir.') == message
  assert 'delete' not in message
  assert steps_on_disk(two_step_workdir) == before


def test_a_checkpoint_of_before_the_config_record_restores_and_refuses_a_new_optimizer(
    config, two_step_workdir):
  workdir = two_step_workdir
  for step in ('1', '2'):  # The meta of commit 24c747a: the model and its input.
    (workdir / 'checkpoints' / step / 'meta' / 'metadata').write_text(json.dumps(
        {'model': config.model, 'num_classes': 10,
         'image_size': config.image_size}))
  assert experiment.build_inference(config, str(workdir)).state.step == 2
  momentum = config.copy_and_resolve_references()
  momentum.momentum = 0.9
  with pytest.raises(UserError, match='holds another train state than this config '
                     r"makes \(e.g. \['opt_state'\]"):
    train.train_and_evaluate(experiment.build(momentum), str(workdir))
  assert steps_on_disk(workdir) == ['1', '2']
