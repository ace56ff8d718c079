"""Evaluation over a whole split, and `--mode=eval` of a checkpoint's weights.

The checkpoint is read by `experiment.build_inference`.
"""

from typing import Any, Callable, Iterator

import jax
import numpy as np

from googlenet_jax import eval_report
from googlenet_jax import input_pipeline
from googlenet_jax import sharding
from googlenet_jax import steps
from googlenet_jax import train_state
from googlenet_jax.experiment import Inference
from googlenet_jax.runtime import progress


def add_metrics(total: steps.Metrics | None, metrics: steps.Metrics) -> steps.Metrics:
  """A running sum of per-batch metric sums, kept on the device."""
  return metrics if total is None else jax.tree.map(jax.numpy.add, total, metrics)


def fetch_metrics(total: steps.Metrics) -> dict[str, Any]:
  """The running sum on the host: scalars as floats, the confusion matrix as numpy."""
  total = sharding.unreplicate(total)
  return {k: float(v) if np.ndim(v) == 0 else v for k, v in total.items()}


def device_batches(source, batch_size: int) -> Iterator[dict]:
  """This process's share of every global batch of `source`, in order, on its devices."""
  return input_pipeline.prefetch_to_device(input_pipeline.eval_batches(
      source, global_batch_size=batch_size,
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_local_devices=jax.local_device_count()))


def evaluate(p_eval_step: Callable, state: train_state.TrainState, source,
             batch_size: int) -> dict[str, Any]:
  """Loss, accuracy and confusion matrix over every example of `source`, each once.

  `batch_size` is the global batch; the last one is padded and masked.
  """
  bar = progress.Progress('test', -(-len(source) // batch_size), batch_size)
  state = train_state.for_inference(state)
  total = None  # Summed on the devices and fetched once.
  for batch in device_batches(source, batch_size):
    total = add_metrics(total, p_eval_step(state, batch)[0])
    bar.update(total)
  bar.close()
  total = fetch_metrics(total)
  result = {'loss': total['loss'] / total['count'],
            'accuracy': total['correct'] / total['count'],
            'num_examples': int(total['count']),
            'skipped': len(source) - int(total['count']),
            'confusion_matrix': total['confusion'].tolist()}
  if 'correct_top5' in total:
    result['top5_accuracy'] = total['correct_top5'] / total['count']
  return result


def evaluate_checkpoint(inference: Inference, workdir: str) -> dict[str, Any]:
  """Evaluates a checkpoint's weights on the whole test set.

  Writes WORKDIR/eval.json and WORKDIR/confusion_matrix.png, and prints the
  accuracy of each class.
  """
  result = evaluate(inference.p_eval_step, sharding.replicate(inference.state),
                    inference.test, inference.eval_batch_size)
  result['step'] = int(inference.state.step)
  result['checkpoint'] = inference.checkpoint_path
  result['per_class_accuracy'] = eval_report.per_class_accuracy(
      result['confusion_matrix'], inference.class_names)
  if jax.process_index() == 0:
    eval_report.write(result, inference.class_names, workdir)
  return result
