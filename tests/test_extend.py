"""A new dataset and a new model are one file and one table row each.

Both are defined here, in a program that adds their rows to the tables and runs
main.py's own `main`: it trains them and evaluates the checkpoint, as a user's
file in googlenet_jax/data/ or googlenet_jax/models/ would be.
"""

import json
import os
import subprocess
import sys

import flax.linen as nn
import pytest

from googlenet_jax import experiment
from googlenet_jax import models
from googlenet_jax.errors import UserError
from conftest import REPO

CLASS_NAMES = ('red', 'green', 'blue', 'cyan', 'magenta', 'yellow')

# A user's dataset file and model file, and their two rows, then main.py.
PROGRAM = f'''
import flax.linen as nn
import numpy as np
from absl import app

import main
from googlenet_jax import data
from googlenet_jax import input_pipeline
from googlenet_jax import models

CLASS_NAMES = {CLASS_NAMES!r}


def load(data_dir):
  """8x8 colour images; those of class c are brighter in channel c % 3."""
  rng = np.random.default_rng(0)
  def split(num):
    labels = np.arange(num) % len(CLASS_NAMES)
    images = rng.integers(0, 64, (num, 8, 8, 3), np.uint8)
    images[np.arange(num), :, :, labels % 3] += 128
    return input_pipeline.ArraySource(images, labels)
  return data.Dataset({{'train': split(32), 'test': split(9)}}, CLASS_NAMES)


class TinyNet(nn.Module):
  num_classes: int = 10
  conv: object = nn.Conv
  max_pool: object = nn.max_pool
  dtype: object = np.float32
  axis_name: str = None

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(self.conv(4, (3, 3), dtype=self.dtype)(x))
    x = self.max_pool(x, (2, 2), strides=(2, 2)).mean(axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


data.DATASETS['colours'] = data.DatasetSpec(load=load, image_shape=(8, 8, 3))
models.MODELS['tinynet'] = models.ModelSpec(TinyNet)
app.run(main.main, flags_parser=main.parse_flags)
'''


def run_program(*args) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  return subprocess.run([sys.executable, '-c', PROGRAM, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_a_new_dataset_and_model_train_and_evaluate_through_main(tmp_path):
  workdir = str(tmp_path / 'w')
  trained = run_program(
      '--config=configs/fmnist96.py', f'--workdir={workdir}', '--config.dataset=colours',
      '--config.model=tinynet', '--config.image_size=8',
      '--config.batch_size=8', '--config.eval_batch_size=4', '--config.num_epochs=1',
      f'--config.compilation_cache_dir={tmp_path / "cache"}')
  assert trained.returncode == 0, trained.stderr[-3000:]
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    assert json.loads(f.readline())['step'] == 4  # 32 examples in batches of 8.
  evaluated = run_program(f'--workdir={workdir}', '--mode=eval')
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  with open(os.path.join(workdir, 'eval.json')) as f:
    result = json.load(f)
  assert result['num_examples'] == 9
  assert list(result['per_class_accuracy']) == list(CLASS_NAMES)


class NoConvForm(nn.Module):
  """A model that builds its own convolutions: it takes no `conv` or `max_pool`."""
  num_classes: int = 10
  dtype: object = None
  axis_name: str | None = None


def test_a_model_that_ignores_the_conv_forms_is_refused_in_one_line(config, monkeypatch):
  monkeypatch.setitem(models.MODELS, 'no_conv_form', models.ModelSpec(NoConvForm))
  refused = config.copy_and_resolve_references()
  refused.model = 'no_conv_form'
  with pytest.raises(UserError, match=r"^Model 'no_conv_form' does not take conv, "
                                      r'max_pool: every model takes the arguments of '
                                      r'models.ModelConstructor'):
    experiment.build(refused, load_data=False)
