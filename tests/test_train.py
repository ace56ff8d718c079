"""Training, evaluation and checkpoints end to end, on small generated data."""

import json
import os
import shutil
import time

import chex
import jax
import numpy as np
import pytest

from googlenet_jax import evaluate
from googlenet_jax import experiment
from googlenet_jax import sharding
from googlenet_jax import train
from googlenet_jax.errors import UserError
from googlenet_jax.runtime import checkpoint
from compare_runs import update_difference
from fake_data import NUM_TEST, NUM_TRAIN


def fixed_batch(num_devices, per_device):
  rng = np.random.default_rng(0)
  shape = (num_devices, per_device)
  return {'image': rng.integers(0, 256, shape + (28, 28, 1), np.uint8),
          'label': rng.integers(0, 10, shape).astype(np.int32)}


def initial_state(config):
  return experiment.build(config, load_data=False).initial_state()


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_train_steps_lower_the_loss_on_a_fixed_batch(config, dtype):
  config = config.copy_and_resolve_references()
  config.dtype = dtype
  p_train_step = experiment.build(config, load_data=False).p_train_step
  state = sharding.replicate(initial_state(config))
  batch = fixed_batch(8, 2)
  losses = []
  for _ in range(6):
    state, metrics = p_train_step(state, batch)
    losses.append(float(metrics['loss'][0] / metrics['count'][0]))
  assert all(b < a for a, b in zip(losses, losses[1:])), losses
  assert losses[-1] < losses[0] - 0.02, losses


def test_8_devices_give_the_1_device_step_and_evaluate_its_checkpoint(config, tmp_path):
  # The convolutions' form is config's 'xla'; test_models checks that the CPU
  # form gives the same logits and gradients.
  state = initial_state(config)
  batch8 = fixed_batch(8, 2)
  batch1 = jax.tree.map(lambda x: x.reshape((1, 16) + x.shape[2:]), batch8)

  one = jax.devices()[:1]
  on_one = experiment.build(config, devices=one, load_data=False)
  state1, metrics1 = on_one.p_train_step(sharding.replicate(state, one), batch1)
  p_train_step8 = experiment.build(config, load_data=False).p_train_step
  state8, metrics8 = p_train_step8(sharding.replicate(state), batch8)

  # XLA's CPU gradients of one batch of 16 are off by ~0.8% (against float64)
  # where eight batches of 2 are exact to 1e-7, so the bound is loose; a missing
  # or doubled average over devices would be off by 100% or more.
  params1, params8 = (sharding.unreplicate(s.params) for s in (state1, state8))
  assert update_difference(params8, params1, state.params) < 0.02
  chex.assert_trees_all_close(metrics8['loss'][0], metrics1['loss'][0], rtol=1e-5)

  # The 1-device state, checkpointed as training does, evaluates on 8 devices.
  manager = checkpoint.create_manager(
      checkpoint.checkpoint_dir(config.checkpoint_dir, str(tmp_path)))
  train.save_checkpoint(manager, state1, on_one.record,
                        train.epoch_so_far(metrics1, time.perf_counter()))
  manager.wait_until_finished()
  evaluated = evaluate.evaluate_checkpoint(experiment.build_inference(config, str(tmp_path)),
                                           str(tmp_path))
  assert (evaluated['step'], evaluated['num_examples']) == (1, NUM_TEST)


@pytest.mark.xdist_group('trained')  # One worker runs the shared run.
def test_training_logs_every_epoch_and_checkpoints_it(config, trained):
  workdir, state = trained
  steps_per_epoch = NUM_TRAIN // config.batch_size
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(line) for line in f]
  assert [(l['epoch'], l['step']) for l in lines] == [
      (1, steps_per_epoch), (2, 2 * steps_per_epoch)]
  for line in lines:
    assert {'train_loss', 'test_loss', 'test_accuracy'} <= line.keys()
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == [
      str(steps_per_epoch), str(2 * steps_per_epoch)]
  assert int(state.step[0]) == 2 * steps_per_epoch
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir))


@pytest.mark.xdist_group('trained')  # One worker runs the shared run.
def test_a_resumed_run_ends_where_the_uninterrupted_one_does(config, trained,
                                                             tmp_path):
  _, uninterrupted = trained
  first_epoch = config.copy_and_resolve_references()
  first_epoch.num_epochs = 1
  train.train_and_evaluate(experiment.build(first_epoch), str(tmp_path))
  resumed = train.train_and_evaluate(experiment.build(config), str(tmp_path))
  chex.assert_trees_all_equal(resumed.params, uninterrupted.params)
  chex.assert_trees_all_equal(resumed.step, uninterrupted.step)


@pytest.mark.xdist_group('trained')  # One worker runs the shared run.
@pytest.mark.parametrize('kept', [0, 100], ids=['killed in its evaluation',
                                                'its line cut short by a full disk'])
def test_an_epoch_not_logged_is_reported_when_resumed(config, trained, tmp_path, kept):
  workdir = tmp_path / 'w'
  shutil.copytree(trained[0], workdir)
  metrics = workdir / 'metrics.jsonl'
  lines = metrics.read_text().splitlines(keepends=True)
  # What a kill in the last epoch's evaluation leaves: its checkpoint, not its
  # line; a full disk stops a write at its last free block, mid-line.
  metrics.write_text(''.join(lines[:-1]) + lines[-1][:kept])
  train.train_and_evaluate(experiment.build(config), str(workdir))
  assert metrics.read_text() == ''.join(lines)  # Its train metrics and speed too.


def test_num_train_steps_stops_mid_epoch_and_logs(config, tmp_path):
  short = config.copy_and_resolve_references()
  short.num_train_steps = 2
  state = train.train_and_evaluate(experiment.build(short), str(tmp_path))
  assert int(state.step[0]) == 2
  with open(tmp_path / 'metrics.jsonl') as f:
    assert [json.loads(line)['step'] for line in f] == [2]


def test_eval_without_a_checkpoint_is_a_user_error(config, tmp_path):
  with pytest.raises(UserError, match='No checkpoint'):
    evaluate.evaluate_checkpoint(experiment.build_inference(config, str(tmp_path)), str(tmp_path))


def test_batch_not_divisible_by_devices_is_refused_before_any_work(config, tmp_path):
  uneven = config.copy_and_resolve_references()
  uneven.batch_size = 12
  with pytest.raises(UserError, match='not divisible by the 8 devices'):
    train.train_and_evaluate(experiment.build(uneven), str(tmp_path / 'w'))
  assert not os.path.exists(tmp_path / 'w')
