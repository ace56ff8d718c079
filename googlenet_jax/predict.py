"""`--mode=predict`: test images with their true and predicted classes, as a picture."""

import functools
import os

import jax
import ml_collections
import numpy as np

from googlenet_jax import evaluate
from googlenet_jax import input_pipeline
from googlenet_jax import plots
from googlenet_jax import steps


def predict(state, source, config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """The first `config.num_predictions` test examples and their predicted classes.

  With `config.predictions_only_mistakes`, only misclassified examples count,
  and the test set is read batch by batch until there are enough.

  Returns:
    {'image': uint8 [N, 28, 28, 1], 'label': [N], 'prediction': [N]}.
  """
  predict_logits = jax.jit(functools.partial(steps.eval_logits,
                                             image_size=config.image_size))
  state = jax.device_put(state)  # Once, not with every batch.
  found = {'image': [], 'label': [], 'prediction': []}
  batches = input_pipeline.eval_batches(
      source, global_batch_size=config.eval_batch_size, process_index=0,
      process_count=1, num_local_devices=1)
  for batch in batches:
    batch = {k: v[0] for k, v in batch.items()}  # The one "device" axis.
    predictions = np.asarray(predict_logits(state, batch['image'])).argmax(-1)
    keep = batch['mask']
    if config.predictions_only_mistakes:
      keep = keep & (predictions != batch['label'])
    found['image'].append(batch['image'][keep])
    found['label'].append(batch['label'][keep])
    found['prediction'].append(predictions[keep])
    if sum(len(p) for p in found['prediction']) >= config.num_predictions:
      break
  return {k: np.concatenate(v)[:config.num_predictions] for k, v in found.items()}


def predict_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Draws the latest checkpoint's predictions as WORKDIR/predictions.png.

  Returns:
    The path of the PNG.
  """
  state = evaluate.restore_for_eval(config, workdir)
  source = input_pipeline.load_sources(config)['test']
  found = predict(state, source, config)
  path = os.path.join(workdir, 'predictions.png')
  if jax.process_index() == 0:
    plots.write_predictions(found['image'], found['label'], found['prediction'],
                            input_pipeline.CLASS_NAMES, path)
  return path
