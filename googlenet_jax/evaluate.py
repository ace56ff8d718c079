"""Evaluation over a whole split, and `--mode=eval` of the latest checkpoint."""

from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np

from googlenet_jax import checkpoint
from googlenet_jax import eval_report
from googlenet_jax import input_pipeline
from googlenet_jax import progress
from googlenet_jax import steps
from googlenet_jax import train_state
from googlenet_jax import validation


def add_metrics(total: steps.Metrics | None, metrics: steps.Metrics) -> steps.Metrics:
  """A running sum of per-batch metric sums, kept on the device."""
  return metrics if total is None else jax.tree.map(jax.numpy.add, total, metrics)


def fetch_metrics(total: steps.Metrics) -> dict[str, Any]:
  """The running sum on the host: scalars as floats, the confusion matrix as numpy."""
  total = train_state.unreplicate(total)
  return {k: float(v) if np.ndim(v) == 0 else v for k, v in total.items()}


def device_batches(source, config: ml_collections.ConfigDict) -> Iterator[dict]:
  """This process's share of every global batch of `source`, in order, on its devices."""
  return input_pipeline.prefetch_to_device(input_pipeline.eval_batches(
      source, global_batch_size=config.eval_batch_size,
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_local_devices=jax.local_device_count()))


def evaluate(p_eval_step: Callable, state: train_state.TrainState, source,
             config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Loss, accuracy and confusion matrix over every example of `source`, each once."""
  bar = progress.Progress('test', -(-len(source) // config.eval_batch_size),
                          config.eval_batch_size)
  total = None  # Summed on the devices and fetched once.
  for batch in device_batches(source, config):
    total = add_metrics(total, p_eval_step(state, batch)[0])
    bar.update(total)
  bar.close()
  total = fetch_metrics(total)
  return {'loss': total['loss'] / total['count'],
          'accuracy': total['correct'] / total['count'],
          'num_examples': int(total['count']),
          'confusion_matrix': total['confusion'].tolist()}


def restore_for_eval(config: ml_collections.ConfigDict,
                     workdir: str) -> train_state.TrainState:
  """The newest readable checkpoint's state, on the host.

  Raises:
    UserError: there is none, or it was written for another model or optimizer.
  """
  validation.check_config(config)
  target = train_state.abstract_train_state(config, train_state.create_model(config))
  manager = checkpoint.create_manager(checkpoint.checkpoint_dir(config, workdir),
                                      read_only=True)
  return checkpoint.restore(manager, target, checkpoint.meta(config))


def evaluate_checkpoint(config: ml_collections.ConfigDict,
                        workdir: str) -> dict[str, Any]:
  """Evaluates the newest readable checkpoint on the whole test set.

  Writes WORKDIR/eval.json and WORKDIR/confusion_matrix.png, and prints the
  accuracy of each class.
  """
  state = restore_for_eval(config, workdir)
  source = input_pipeline.load_sources(config)['test']
  result = evaluate(steps.pmap_eval_step(config), train_state.replicate(state),
                    source, config)
  result['step'] = int(state.step)
  result['per_class_accuracy'] = eval_report.per_class_accuracy(
      result['confusion_matrix'])
  if jax.process_index() == 0:
    eval_report.write(result, workdir)
  return result
