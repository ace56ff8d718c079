"""`--mode=predict`: test images with their true and predicted classes, as a picture."""

import contextlib
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


def predict(p_eval_step: Callable, state, source: input_pipeline.Source,
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
    {'image': uint8 [N, H, W, C] as the model sees them, 'label': [N],
     'prediction': [N]}.
  """
  state = sharding.replicate(state)
  indices, labels, predictions = [], [], []
  batch_starts = itertools.count(0, eval_batch_size)
  for start, batch in zip(batch_starts, evaluate.device_batches(source, eval_batch_size)):
    _, predicted = p_eval_step(state, batch)
    # Every process's rows, in the global batch's order: all processes see the
    # same predictions, so they stop at the same batch.
    predicted, label, real = (
        np.asarray(multihost_utils.process_allgather(x, tiled=True)).reshape(-1)
        for x in (predicted, batch['label'], batch['mask']))
    keep = real.astype(bool)  # Not the last batch's padding, nor an unreadable image.
    if only_mistakes:
      keep &= predicted != label
    indices.append(np.arange(start, start + len(predicted))[keep])
    labels.append(label[keep])
    predictions.append(predicted[keep])
    if sum(map(len, indices)) >= num_predictions:
      break
  index = np.concatenate(indices)[:num_predictions]
  with contextlib.closing(source.read([index], train=False, seed=0, epoch=0)) as read:
    images = next(read)['image']
  return {'image': images, 'label': np.concatenate(labels)[:num_predictions],
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
