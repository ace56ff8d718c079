"""Progress of training and evaluation on stderr, printed by process 0 only.

On a terminal it is a tqdm bar. Anywhere else (CI, a TPU job's log file) a bar's
carriage-return redraws turn into noise, so it prints one plain line every
`report_every_secs` seconds and one when done.

The loss shown is fetched from the device only every `LOSS_EVERY_STEPS` steps or
when a line is due: fetching it every step would make the host wait for each
step and stop it from queueing the next ones.
"""

import sys
import time
from typing import Mapping, TextIO

import jax
import numpy as np
from tqdm import tqdm

LOSS_EVERY_STEPS = 10


class Progress:
  """Steps done, images/s, loss and ETA of one loop (an epoch, or an evaluation).

  Usage: `bar = Progress('epoch 1/10', total=468, images_per_step=128)`, then
  `bar.update(metrics)` after each step and `bar.close()` after the loop.
  """

  def __init__(self, description: str, total: int, images_per_step: int,
               initial: int = 0, steps_after: int = 0,
               stream: TextIO | None = None, report_every_secs: float = 30.0,
               enabled: bool | None = None):
    """Starts the clock.

    Args:
      description: what the loop is, e.g. 'epoch 3/10' or 'test'.
      total: the step the loop ends at.
      images_per_step: the global batch size, for images/s.
      initial: the step the loop starts at (a resumed epoch).
      steps_after: steps of the same rate that follow this loop (the run's later
        epochs), for the run's ETA.
      stream: where to print; stderr by default.
      report_every_secs: on a non-terminal stream, seconds between lines.
      enabled: whether to print; by default only on process 0.
    """
    self._description = description
    self._total = total
    self._images_per_step = images_per_step
    self._initial = self._step = initial
    self._steps_after = steps_after
    self._stream = stream or sys.stderr
    self._report_every_secs = report_every_secs
    self._enabled = jax.process_index() == 0 if enabled is None else enabled
    self._loss = None
    self._last_metrics = None
    self._created = self._start = self._last_report = time.perf_counter()
    self._bar = None
    if self._enabled and self._stream.isatty():
      self._bar = tqdm(total=total, initial=initial, desc=description,
                       unit='step', file=self._stream, dynamic_ncols=True)

  def update(self, metrics: Mapping[str, jax.Array] | None = None) -> None:
    """Counts one step; `metrics` are its (replicated) loss and count sums."""
    self._step += 1
    if not self._enabled:
      return
    self._last_metrics = metrics
    now = time.perf_counter()
    if self._step == self._initial + 1:
      # The first step includes compiling it: rates and ETAs count from its end.
      self._start = self._last_report = now
    line_due = (self._bar is None and
                now - self._last_report >= self._report_every_secs)
    if metrics is not None and (self._step % LOSS_EVERY_STEPS == 0 or line_due):
      self._loss = float(np.asarray(metrics['loss'])[0] /
                         np.asarray(metrics['count'])[0])
    if self._bar is not None:
      self._bar.set_postfix_str(self._postfix(), refresh=False)
      self._bar.update()
    elif line_due:
      self._print_line()
      self._last_report = now

  def close(self) -> None:
    """Waits for the last step to finish, then ends the bar or prints the last line.

    Steps run asynchronously: without the wait, the rate would count steps
    queued, not done (thousands of images/s when a cached step is queued at once).
    """
    jax.block_until_ready(self._last_metrics)
    if self._bar is not None:
      self._bar.set_postfix_str(self._postfix(), refresh=False)
      self._bar.close()
    elif self._enabled:
      self._print_line()

  def _steps_per_sec(self) -> float:
    timed_steps = self._step - self._initial - 1
    return timed_steps / max(time.perf_counter() - self._start, 1e-9)

  def _postfix(self) -> str:
    postfix = f'{self._steps_per_sec() * self._images_per_step:.1f} images/s'
    if self._loss is not None:
      postfix += f', loss {self._loss:.4f}'
    if self._bar is not None and self._steps_after:
      postfix += f', run ETA {self._run_eta()}'
    return postfix

  def _seconds_for(self, steps: int) -> float:
    rate = self._steps_per_sec()
    return steps / rate if rate else 0.0

  def _run_eta(self) -> str:
    """Time left for this loop and the steps after it, at the current rate."""
    steps = self._total - self._step + self._steps_after
    return tqdm.format_interval(self._seconds_for(steps))

  def _print_line(self) -> None:
    if self._step < self._total:
      timing = f'ETA {tqdm.format_interval(self._seconds_for(self._total - self._step))}'
    else:
      timing = f'took {tqdm.format_interval(time.perf_counter() - self._created)}'
    if self._steps_after:
      timing += f', run ETA {self._run_eta()}'
    print(f'{self._description} step {self._step}/{self._total}: {self._postfix()}, '
          f'{timing}', file=self._stream, flush=True)


def epoch_progress(step: int, num_steps: int, steps_per_epoch: int,
                   batch_size: int) -> Progress:
  """The progress of the epoch that `step` is in, up to its end or `num_steps`."""
  epoch, step_in_epoch = divmod(step, steps_per_epoch)
  total = min(steps_per_epoch, num_steps - epoch * steps_per_epoch)
  num_epochs = -(-num_steps // steps_per_epoch)
  return Progress(f'epoch {epoch + 1}/{num_epochs}', total, batch_size,
                  initial=step_in_epoch,
                  steps_after=num_steps - epoch * steps_per_epoch - total)
