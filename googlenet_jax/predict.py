"""`--mode=predict`: test images with their true and predicted classes, as a picture."""

import itertools
import os
from typing import Callable

import jax
from jax.experimental import multihost_utils
import numpy as np

from googlenet_jax import evaluate
from googlenet_jax import input_pipeline
from googlenet_jax import plots
from googlenet_jax import sharding
from googlenet_jax.experiment import Inference


def predict(p_eval_step: Callable, state, source: input_pipeline.ArraySource,
            eval_batch_size: int, num_predictions: int,
            only_mistakes: bool = False) -> dict[str, np.ndarray]:
  """The first `num_predictions` test examples and their predicted classes.

  The classes are the eval step's, on every device of every process; with
  `only_mistakes`, only misclassified examples count, and the test set is read
  batch by batch until there are enough.

  Args:
    p_eval_step: the pmapped eval step.
    state: the train state, on the host.
    source: the test examples.
    eval_batch_size: the global batch.
    num_predictions: how many examples to return.
    only_mistakes: return misclassified examples only.

  Returns:
    {'image': uint8 [N, H, W, C], 'label': [N], 'prediction': [N]}.
  """
  state = sharding.replicate(state)
  indices, predictions = [], []
  batch_starts = itertools.count(0, eval_batch_size)
  for start, batch in zip(batch_starts, evaluate.device_batches(source, eval_batch_size)):
    _, predicted = p_eval_step(state, batch)
    # Every process's rows, in the global batch's order: all processes see the
    # same predictions, so they stop at the same batch.
    predicted = multihost_utils.process_allgather(predicted, tiled=True).reshape(-1)
    index = np.arange(start, start + len(predicted))
    keep = index < len(source)  # Not the last batch's padding.
    if only_mistakes:
      keep &= predicted != source.labels[np.minimum(index, len(source) - 1)]
    indices.append(index[keep])
    predictions.append(predicted[keep])
    if sum(map(len, indices)) >= num_predictions:
      break
  index = np.concatenate(indices)[:num_predictions]
  return {'image': source.images[index], 'label': source.labels[index],
          'prediction': np.concatenate(predictions)[:num_predictions]}


def predict_checkpoint(inference: Inference, workdir: str) -> str:
  """Draws a checkpoint's predictions as WORKDIR/predictions.png.

  Returns:
    The path of the PNG.
  """
  found = predict(inference.p_eval_step, inference.state, inference.test,
                  inference.eval_batch_size, inference.num_predictions,
                  inference.predictions_only_mistakes)
  path = os.path.join(workdir, 'predictions.png')
  if jax.process_index() == 0:
    plots.write_predictions(found['image'], found['label'], found['prediction'],
                            inference.class_names, path)
  return path
