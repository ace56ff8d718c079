"""The training loop: epochs of pmapped steps, checkpoints, evaluation and logs.

It runs an `experiment.Experiment`, built once from the config. Re-running the
same command resumes from the latest checkpoint at its exact step. The steps
themselves are in `steps.py`, the initial state in `train_state.py`, evaluation
in `evaluate.py`.
"""

import itertools
import math
import time
from typing import Callable, Iterable, Iterator

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np

from googlenet_jax import evaluate
from googlenet_jax import input_pipeline
from googlenet_jax import plots
from googlenet_jax import sharding
from googlenet_jax import steps
from googlenet_jax import train_state
from googlenet_jax.errors import UserError, describe_os_error
from googlenet_jax.experiment import Experiment
from googlenet_jax.runtime import checkpoint
from googlenet_jax.runtime import distributed
from googlenet_jax.runtime import preemption
from googlenet_jax.runtime import progress
from googlenet_jax.runtime import workdirs
from googlenet_jax.runtime.metric_writers import MetricWriter


# A checkpoint's meta key: its epoch's train metric sums and seconds up to its step,
# so that a resumed epoch reports the same train metrics as an uninterrupted one.
EPOCH_SO_FAR = 'epoch_so_far'


def epoch_so_far(total: steps.Metrics, start_time: float) -> dict:
  """The epoch's running metric sums on the host, and its training seconds since
  `start_time` (a `time.perf_counter()` reading)."""
  return {'sums': evaluate.fetch_metrics(total),
          'seconds': time.perf_counter() - start_time}


def save_checkpoint(manager, state: train_state.TrainState, record: dict,
                    so_far: dict) -> None:
  """Saves the replicated `state` with the config's `record` and the epoch's
  metrics `so_far` (`epoch_so_far`), unless training has diverged since the last save.

  Raises:
    UserError: the training loss or a parameter is NaN or infinite; the last
      good checkpoint is kept as it is.
  """
  host_state = sharding.unreplicate(state)
  params_finite = all(np.isfinite(x).all() for x in jax.tree.leaves(host_state.params))
  if not (math.isfinite(so_far['sums']['loss']) and params_finite):
    raise UserError(
        f'The training loss is not finite at step {host_state.step}: stopped '
        f'without saving. The last good checkpoint is step {manager.latest_step()} '
        f'in {manager.directory}; try a lower learning rate.')
  checkpoint.save(manager, host_state, {**record, EPOCH_SO_FAR: so_far})


class CheckpointClock:
  """Whether `checkpoint_every_minutes` have passed since the last checkpoint.

  It bounds what a stop without warning loses: a TPU VM's maintenance starts
  at once unless Autocheckpoint sends SIGTERM first, and a lost Spot VM takes
  its disk. The hosts of a run must save at one step (Orbax's save is a
  collective), so on several hosts they agree whether any host's time is up,
  every AGREE_EVERY_STEPS steps: a collective at every step would make the
  host wait for each step to end.
  """
  AGREE_EVERY_STEPS = 10

  def __init__(self, minutes: float):
    self.seconds = 60 * minutes
    self.restart()

  def restart(self) -> None:
    """Counts from now: a checkpoint has just been saved."""
    self.start = time.monotonic()

  def time_up(self, step: int) -> bool:
    """Whether to checkpoint after `step`; every process must ask after every step."""
    if not self.seconds:
      return False
    mine = time.monotonic() - self.start >= self.seconds
    if jax.process_count() == 1:
      return mine
    if step % self.AGREE_EVERY_STEPS:
      return False
    return bool(multihost_utils.process_allgather(np.array(mine)).any())


def epoch_ended(step: int, steps_per_epoch: int, num_steps: int) -> bool:
  """Whether `step` ends an epoch: a multiple of the epoch, or the run's last step."""
  return step > 0 and (step % steps_per_epoch == 0 or step == num_steps)


def checkpoint_due(every_steps: int, step: int, steps_per_epoch: int, num_steps: int,
                   time_up: bool) -> bool:
  """Whether `every_steps`, or the clock's `time_up`, asks for a checkpoint now.

  Epoch ends and the run's end are saved anyway, so they never count here.
  """
  asked = time_up or bool(every_steps and step % every_steps == 0)
  return asked and not epoch_ended(step, steps_per_epoch, num_steps)


def restore_or_create(experiment: Experiment,
                      manager) -> tuple[train_state.TrainState, dict | None]:
  """The latest checkpoint's state if there is one, else a new one; on the host.

  Returns:
    The state, and the `epoch_so_far` that its checkpoint records (None for a
    new state, or a checkpoint written before that record).
  """
  if manager.latest_step() is None:
    return experiment.initial_state(), None
  _, state = checkpoint.restore(manager.directory, manager.all_steps(),
                                experiment.abstract_state(), experiment.record, resume=True)
  manager.reload()  # Damaged steps may have been moved aside.
  step = int(state.step)
  logging.info('Resuming from the checkpoint at step %d.', step)
  meta = checkpoint.read_meta(epath.Path(manager.directory) / str(step))
  return state, meta.get(EPOCH_SO_FAR)


def resume_epoch(writer: MetricWriter, experiment: Experiment, workdir: str,
                 state: train_state.TrainState, step: int,
                 so_far: dict | None) -> dict | None:
  """What a run resumed with the replicated `state` of `step` carries on with: its
  epoch's `so_far`, or None when `step` ends an epoch.

  A run killed in an epoch's evaluation, after its checkpoint, never reported
  that epoch: it is evaluated and reported now, with its train metrics `so_far`.
  """
  if not epoch_ended(step, experiment.steps_per_epoch, experiment.num_steps):
    if step and so_far is None:
      logging.warning('The checkpoint at step %d does not record its epoch\'s metrics so '
                      'far: epoch %d\'s train metrics will cover only the steps from here.',
                      step, step // experiment.steps_per_epoch + 1)
    return so_far
  if so_far and not logged_by_process_0(writer, step):
    logging.info('Epoch %d was not reported before its run stopped: evaluating it now.',
                 (step - 1) // experiment.steps_per_epoch + 1)
    end_epoch(writer, experiment, workdir, state, step, so_far)
  return None


def logged_by_process_0(writer: MetricWriter, step: int) -> bool:
  """Whether process 0's metrics.jsonl has `step`, as every process learns."""
  logged = writer.has_step(step)
  if jax.process_count() == 1:
    return logged
  return bool(multihost_utils.broadcast_one_to_all(np.array(logged)))


def end_epoch(writer: MetricWriter, experiment: Experiment, workdir: str,
              state: train_state.TrainState, step: int, so_far: dict) -> None:
  """Evaluates the replicated `state` of `step`, which ends an epoch, and reports
  the epoch with its train metrics `so_far`."""
  test = evaluate.evaluate(experiment.p_eval_step, state, experiment.dataset.splits['test'],
                           experiment.eval_batch_size)
  train = so_far['sums']
  report_epoch(writer, workdir, step, (step - 1) // experiment.steps_per_epoch, train, test,
               train['count'] / so_far['seconds'],
               float(experiment.learning_rate_fn(step - 1)))


# After a step: (the step count, the state, the running sums of its metrics).
AfterStep = tuple[int, train_state.TrainState, steps.Metrics]


def train_steps(p_train_step: Callable, state: train_state.TrainState,
                batches: Iterable, step: int, bar: progress.Progress,
                carried: dict | None = None) -> Iterator[AfterStep]:
  """Runs a step per batch; yields (step count, state, running metric sums) after each.

  Args:
    p_train_step: the pmapped train step.
    state: the replicated train state.
    batches: the batches to train on.
    step: the step count before the first batch.
    bar: counts each step.
    carried: the host sums that the running sums start from (the `epoch_so_far`
      of a resumed epoch), else None.
  """
  total = None  # Summed as it goes: a checkpoint mid-epoch reads it.
  for batch in batches:
    state, metrics = p_train_step(state, batch)
    if total is None and carried:
      total = on_devices_like(carried, metrics)
    total = evaluate.add_metrics(total, metrics)
    bar.update(metrics)
    step += 1
    yield step, state, total


def on_devices_like(sums: dict, like: steps.Metrics) -> steps.Metrics:
  """Host `sums` laid out and typed as the step's metrics `like`, so that adding a
  step's metrics to them rounds as in a run that never stopped."""
  return sharding.replicate({k: np.asarray(sums[k], like[k].dtype) for k in like})


def train_and_evaluate(experiment: Experiment, workdir: str) -> train_state.TrainState:
  """Trains, evaluating and checkpointing after every epoch; resumes if it can.

  A stop (SIGTERM, Ctrl-C) saves a checkpoint at the current step and returns;
  one that lands on an epoch's last step first finishes that epoch's evaluation.
  A resumed run reports every epoch once, with the train metrics of all its
  steps (`EPOCH_SO_FAR`), even one whose evaluation a kill cut short.

  Returns:
    The final (replicated) train state.

  Raises:
    UserError: another training holds the workdir, this config cannot continue
      from its checkpoint, or the file system failed (a full disk, no
      permission): the last good checkpoint is kept and named.
  """
  workdirs.create(workdir)
  with workdirs.lock(workdir, active=jax.process_index() == 0):
    manager = checkpoint.create_manager(
        checkpoint.checkpoint_dir(experiment.checkpointing.directory, workdir),
        experiment.checkpointing.max_to_keep)
    try:
      return run_training(experiment, workdir, manager)
    except OSError as e:  # metrics.jsonl, TensorBoard events, a picture.
      raise UserError(f'{describe_os_error(e)}: stopped. '
                      f'{checkpoint.last_good_checkpoint(manager)}') from e


def run_training(experiment: Experiment, workdir: str, manager) -> train_state.TrainState:
  """The body of `train_and_evaluate`, run while holding the workdir."""
  steps_per_epoch, num_steps = experiment.steps_per_epoch, experiment.num_steps
  splits = experiment.dataset.splits
  distributed.check_hosts_agree(manager.latest_step() or 0, experiment.config_text,
                                workdir)
  state, so_far = restore_or_create(experiment, manager)
  step = int(state.step)
  state = sharding.replicate(state)
  clock = CheckpointClock(experiment.checkpointing.every_minutes)

  with (MetricWriter(workdir, active=jax.process_index() == 0) as writer,
        preemption.StopSignal() as stop):
    writer.write_config(step, experiment.config_text)
    so_far = resume_epoch(writer, experiment, workdir, state, step, so_far)
    stopped = False
    while step < num_steps and not stopped:
      epoch, step_in_epoch = divmod(step, steps_per_epoch)
      epoch_end = min((epoch + 1) * steps_per_epoch, num_steps)
      batches = input_pipeline.train_batches(
          splits['train'], global_batch_size=experiment.batch_size, seed=experiment.seed,
          epoch=epoch, process_index=jax.process_index(),
          process_count=jax.process_count(),
          num_local_devices=jax.local_device_count(), start_step=step_in_epoch)
      batches = input_pipeline.prefetch_to_device(
          itertools.islice(batches, epoch_end - step))
      bar = progress.epoch_progress(step, num_steps, steps_per_epoch, experiment.batch_size)
      # A resumed epoch carries on with the sums and seconds of its checkpoint.
      start_time = time.perf_counter() - (so_far['seconds'] if so_far else 0.0)
      for step, state, total in train_steps(experiment.p_train_step, state, batches, step,
                                            bar, so_far and so_far['sums']):
        if stop.requested(step):
          stopped = True
          break
        if checkpoint_due(experiment.checkpointing.every_steps, step, steps_per_epoch,
                          num_steps, clock.time_up(step)):
          save_checkpoint(manager, state, experiment.record,
                          epoch_so_far(total, start_time))
          clock.restart()
      bar.close()
      so_far = epoch_so_far(total, start_time)
      save_checkpoint(manager, state, experiment.record, so_far)
      clock.restart()
      if step < epoch_end:  # Stopped mid-epoch: the epoch is reported when it ends.
        break
      end_epoch(writer, experiment, workdir, state, step, so_far)
      so_far = None  # The next epoch starts from nothing.
    manager.wait_until_finished()
    if stopped:
      logging.warning('Stopped at step %d with a checkpoint; run the same '
                      'command again to resume.', step)
  return state


def report_epoch(writer: MetricWriter, workdir: str, step: int, epoch: int, train: dict,
                 test: dict, images_per_sec: float, learning_rate: float) -> None:
  """Logs an epoch's metrics, writes them to TensorBoard and metrics.jsonl, redraws curves.

  `learning_rate` is the rate of the epoch's last update, the one that made `step`.
  """
  scalars = {'epoch': epoch + 1, 'train_loss': train['loss'] / train['count'],
             'train_accuracy': train['correct'] / train['count'],
             'test_loss': test['loss'], 'test_accuracy': test['accuracy'],
             'train_images_per_sec': images_per_sec, 'learning_rate': learning_rate}
  if 'top5_accuracy' in test:
    scalars['test_top5_accuracy'] = test['top5_accuracy']
  if train.get('skipped') or test.get('skipped'):  # Images that could not be decoded.
    scalars.update(train_skipped=int(train.get('skipped', 0)), test_skipped=test['skipped'])
  logging.info('step %d, epoch %d: train loss %.4f, test loss %.4f, test '
               'accuracy %.4f, %.1f images/s', step, epoch + 1,
               scalars['train_loss'], test['loss'], test['accuracy'], images_per_sec)
  if writer.active:
    writer.write_scalars(step, scalars)
    plots.write_curves(workdir)
