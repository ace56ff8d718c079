"""Stopping cleanly when the job is preempted (SIGTERM) or interrupted (Ctrl-C).

Cloud TPU VMs and most schedulers send SIGTERM before they kill a job. The train
loop asks `StopSignal.requested(step)` after every step; when it says yes, the loop
saves a checkpoint at that step, waits for it to be written and returns. Further
signals while that checkpoint is written are ignored, so they cannot break it.

Several processes (pod hosts) must stop at the same step, or the ones still
training wait for ever in a collective. JAX's preemption sync (a SIGTERM handler
of its own, and the distributed client that main.py always starts for them)
agrees on that step: a SIGTERM on any host stops all of them there. Ctrl-C on a
host is passed to it as a SIGTERM.
"""

import signal

from absl import logging
import jax
from jax.experimental import multihost_utils


class StopSignal:
  """A context in which SIGTERM and SIGINT request a stop instead of killing."""

  def __init__(self):
    self._received = False
    self._previous_handlers = {}

  def __enter__(self) -> 'StopSignal':
    if jax.process_count() == 1:
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous_handlers[sig] = signal.signal(sig, self._handle)
    else:  # SIGTERM stays with JAX's preemption sync.
      self._previous_handlers[signal.SIGINT] = signal.signal(
          signal.SIGINT, self._handle_as_sigterm)
    return self

  def __exit__(self, *exc_info) -> None:
    for sig, handler in self._previous_handlers.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame) -> None:
    del frame
    if not self._received:
      logging.warning('Received %s: saving a checkpoint after this step, then '
                      'stopping.', signal.Signals(signum).name)
    self._received = True

  def _handle_as_sigterm(self, signum, frame) -> None:
    if not self._received:
      self._handle(signum, frame)
      signal.raise_signal(signal.SIGTERM)  # To JAX's handler, which tells all hosts.

  def requested(self, step: int) -> bool:
    """Whether to stop after `step`; every process must ask at every step."""
    if jax.process_count() > 1:
      # All hosts agree on the step at which to stop after a preemption notice.
      return multihost_utils.reached_preemption_sync_point(step)
    return self._received
