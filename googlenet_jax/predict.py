"""`--mode=predict`: test images with their true and predicted classes, as a picture."""

import itertools
import os
from typing import Collection

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from googlenet_jax import evaluate
from googlenet_jax import input_pipeline
from googlenet_jax import plots
from googlenet_jax import sharding
from googlenet_jax import steps


def predict(state, source, config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """The first `config.num_predictions` test examples and their predicted classes.

  The classes are the eval step's, on every device of every process; with
  `config.predictions_only_mistakes`, only misclassified examples count, and the
  test set is read batch by batch until there are enough.

  Args:
    state: the train state, on the host.
    source: the test examples.
    config: the run's config.

  Returns:
    {'image': uint8 [N, 28, 28, 1], 'label': [N], 'prediction': [N]}.
  """
  p_eval_step = steps.pmap_eval_step(config)
  state = sharding.replicate(state)
  indices, predictions = [], []
  batch_starts = itertools.count(0, config.eval_batch_size)
  for start, batch in zip(batch_starts, evaluate.device_batches(source, config.eval_batch_size)):
    _, predicted = p_eval_step(state, batch)
    # Every process's rows, in the global batch's order: all processes see the
    # same predictions, so they stop at the same batch.
    predicted = multihost_utils.process_allgather(predicted, tiled=True).reshape(-1)
    index = np.arange(start, start + len(predicted))
    keep = index < len(source)  # Not the last batch's padding.
    if config.predictions_only_mistakes:
      keep &= predicted != source.labels[np.minimum(index, len(source) - 1)]
    indices.append(index[keep])
    predictions.append(predicted[keep])
    if sum(map(len, indices)) >= config.num_predictions:
      break
  index = np.concatenate(indices)[:config.num_predictions]
  return {'image': source.images[index], 'label': source.labels[index],
          'prediction': np.concatenate(predictions)[:config.num_predictions]}


def predict_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                       checkpoint_path: str | None = None,
                       overrides: Collection[str] = ()) -> str:
  """Draws the newest readable checkpoint's predictions as WORKDIR/predictions.png.

  The arguments are `evaluate.restore_for_eval`'s.

  Returns:
    The path of the PNG.
  """
  config, state, _ = evaluate.restore_for_eval(config, workdir, checkpoint_path, overrides)
  source = input_pipeline.load_sources(config)['test']
  found = predict(state, source, config)
  path = os.path.join(workdir, 'predictions.png')
  if jax.process_index() == 0:
    plots.write_predictions(found['image'], found['label'], found['prediction'],
                            input_pipeline.CLASS_NAMES, path)
  return path
