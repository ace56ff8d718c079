"""Evaluation over a whole split, and `--mode=eval` of a checkpoint's weights."""

from typing import Any, Callable, Collection, Iterator, NamedTuple

from absl import logging
import jax
import ml_collections
import numpy as np

from googlenet_jax import checkpoint
from googlenet_jax import config_fields
from googlenet_jax import eval_report
from googlenet_jax import input_pipeline
from googlenet_jax import progress
from googlenet_jax import sharding
from googlenet_jax import steps
from googlenet_jax import train_state
from googlenet_jax import validation


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
  return {'loss': total['loss'] / total['count'],
          'accuracy': total['correct'] / total['count'],
          'num_examples': int(total['count']),
          'confusion_matrix': total['confusion'].tolist()}


def inference_config(config: ml_collections.ConfigDict, record: dict[str, Any],
                     overrides: Collection[str] = ()) -> ml_collections.ConfigDict:
  """`config` with the network and compute fields of a checkpoint's `record`.

  A field in `overrides` (set on the command line) keeps its value: a compute
  field (dtype) then runs as asked; a network field is checked against the
  record when the checkpoint is read. Fields the record lacks (it predates
  them) keep the config's value.
  """
  config = config.copy_and_resolve_references()
  for field in config_fields.READ_FOR_INFERENCE:
    if field in record and field not in overrides and record[field] != config[field]:
      logging.info("Using the checkpoint's %s=%r (the config has %r).", field,
                   record[field], config[field])
      config[field] = record[field]
  return config


class Restored(NamedTuple):
  """A checkpoint read for inference."""
  config: ml_collections.ConfigDict  # The run's, with the checkpoint's network.
  state: train_state.TrainState  # On the host, inference only: no optimizer.
  path: str  # The step's directory.


def restore_for_eval(config: ml_collections.ConfigDict, workdir: str,
                     checkpoint_path: str | None = None,
                     overrides: Collection[str] = ()) -> Restored:
  """The weights of the newest readable checkpoint, and the config to run them with.

  Only the parameters and BatchNorm statistics are read, so the optimizer and
  training fields that wrote the checkpoint need not be given.

  Args:
    config: the run's config; its network fields are defaults (see
      `inference_config`).
    workdir: the training's workdir, whose checkpoints are read unless
      `checkpoint_path` is given.
    checkpoint_path: a checkpoints directory, one step's directory or a workdir.
    overrides: the config fields the user set; see `inference_config`.

  Raises:
    UserError: there is no readable checkpoint, or an override changes the network.
  """
  directory, steps = checkpoint.find_steps(
      checkpoint_path or checkpoint.checkpoint_dir(config.checkpoint_dir, workdir))
  config = inference_config(config, checkpoint.newest_record(directory, steps), overrides)
  validation.check_batch_sizes(config, jax.device_count(), ('eval_batch_size',))
  model = train_state.create_model(config)
  target = checkpoint.weights(train_state.abstract_train_state(config, model))
  step, weights = checkpoint.restore(directory, steps, target, config_fields.record(config))
  state = train_state.TrainState(step=step, apply_fn=model.apply, tx=None, opt_state=None,
                                 **weights)  # As `train_state.for_inference` makes it.
  return Restored(config, state, str(directory / str(step)))


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        checkpoint_path: str | None = None,
                        overrides: Collection[str] = ()) -> dict[str, Any]:
  """Evaluates the newest readable checkpoint on the whole test set.

  Writes WORKDIR/eval.json and WORKDIR/confusion_matrix.png, and prints the
  accuracy of each class. The arguments are `restore_for_eval`'s.
  """
  config, state, path = restore_for_eval(config, workdir, checkpoint_path, overrides)
  source = input_pipeline.load_sources(config)['test']
  result = evaluate(steps.pmap_eval_step(config), sharding.replicate(state),
                    source, config.eval_batch_size)
  result['step'] = int(state.step)
  result['checkpoint'] = path
  result['per_class_accuracy'] = eval_report.per_class_accuracy(
      result['confusion_matrix'])
  if jax.process_index() == 0:
    eval_report.write(result, workdir)
  return result
