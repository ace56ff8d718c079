"""Eval and predict from a checkpoint's path alone: the network comes from its record.

One training with a momentum, a learning rate and a schedule of its own (which
eval must not need) at 32x32 (not the config file's 96); then main.py as a user
runs it, with only the flags of this machine: where the data and the compilation
cache are, and the eval batch size.
"""

import json
import re

import chex
from etils import epath
import pytest

from conftest import COMPILATION_CACHE_DIR, run_main
from googlenet_jax import experiment
from googlenet_jax import train

pytestmark = pytest.mark.xdist_group('momentum_run')  # One worker trains it.

def machine_flags(config) -> list[str]:
  """The flags of this machine and of eval alone: no field of the training."""
  return [f'--config.source_dir={config.source_dir}',
          f'--config.data_dir={config.data_dir}', '--config.verify_checksums=false',
          f'--config.compilation_cache_dir={COMPILATION_CACHE_DIR}',
          # The training's evaluation batches: the same rows, so the same logits.
          f'--config.eval_batch_size={config.eval_batch_size}']


def tree_listing(path: epath.Path) -> dict[str, tuple[int, float]]:
  """Every file under `path` with its size and modification time."""
  return {str(p): (p.stat().st_size, p.stat().st_mtime)
          for p in path.rglob('*') if p.is_file()}


@pytest.fixture(scope='module')
def momentum_run(config, tmp_path_factory):
  """2 steps with Nesterov momentum, a cosine schedule and lr 0.07; resumed once."""
  trained = config.copy_and_resolve_references()
  trained.update(momentum=0.9, nesterov=True, learning_rate=0.07, schedule='cosine',
                 warmup_epochs=0.5, num_train_steps=2)
  workdir = tmp_path_factory.mktemp('momentum')
  state = train.train_and_evaluate(experiment.build(trained), str(workdir))
  # The same command again restores the momentum's optimizer state, and stops.
  chex.assert_trees_all_equal(train.train_and_evaluate(experiment.build(trained), str(workdir)).opt_state,
                              state.opt_state)
  return workdir


def test_eval_of_a_bucket_copy_needs_no_training_flag(config, momentum_run, gcs, bucket,
                                                      tmp_path):
  # A step copied by hand (as gsutil cp -r does) into a bucket, then evaluated.
  step = momentum_run / 'checkpoints' / '2'
  copy = epath.Path(f'{bucket}/copied/2')
  for path in step.rglob('*'):
    if path.is_file():
      (copy / path.relative_to(step)).parent.mkdir(parents=True, exist_ok=True)
      (copy / path.relative_to(step)).write_bytes(path.read_bytes())
  result = run_main(tmp_path, None, '--mode=eval', f'--checkpoint={copy}',
                    *machine_flags(config))
  assert result.returncode == 0, result.stderr[-3000:]
  assert not re.search(r'^W\d{4} ', result.stderr, re.M), result.stderr
  assert f'Checkpoint at step 2 ({copy}): test loss' in result.stdout
  evaluated = json.loads((tmp_path / 'eval.json').read_text())
  with open(momentum_run / 'metrics.jsonl') as f:
    last = json.loads(f.readlines()[-1])
  assert evaluated['accuracy'] == last['test_accuracy']
  assert evaluated['step'] == last['step'] == 2


def test_predict_reads_the_workdir_alone_and_writes_nothing_there(config, momentum_run):
  checkpoints = momentum_run / 'checkpoints'
  before = tree_listing(checkpoints)
  result = run_main(momentum_run, None, '--mode=predict', *machine_flags(config))
  assert result.returncode == 0, result.stderr[-3000:]
  assert not re.search(r'^W\d{4} ', result.stderr, re.M), result.stderr
  assert (momentum_run / 'predictions.png').stat().st_size > 0
  assert tree_listing(checkpoints) == before


def test_a_flag_that_changes_the_network_is_one_line(config, momentum_run):
  result = run_main(momentum_run, None, '--mode=eval', '--config.model=googlenet_bn',
                    *machine_flags(config), num_devices=1)
  assert result.returncode == 1
  assert result.stderr.splitlines()[-1] == (
      f"Error: config.model is 'googlenet_bn', but the checkpoint at step 2 in "
      f"{momentum_run}/checkpoints was written with model='{config.model}': run with "
      f'--config.model={config.model}, or without the flag.')
  assert 'Traceback' not in result.stderr
