"""Scalars and the config to TensorBoard (tensorboardX, no TensorFlow); scalars also
to WORKDIR/metrics.jsonl."""

import json
import os
from typing import Mapping

from tensorboardX import SummaryWriter


class MetricWriter:
  """Writes each step's scalars as TensorBoard events and as one JSON line.

  Use it as a context manager, so that it is closed however the run ends. An
  inactive writer (every process but the first of a multi-host run) writes nothing.
  """

  def __init__(self, workdir: str, active: bool = True):
    self.active = active
    if active:
      os.makedirs(workdir, exist_ok=True)
      self._summary_writer = SummaryWriter(logdir=workdir)
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')

  def __enter__(self) -> 'MetricWriter':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.active:
      return
    for name, value in scalars.items():
      self._summary_writer.add_scalar(name, value, global_step=step)
    self._summary_writer.flush()
    self._jsonl.write(json.dumps({'step': step, **scalars}) + '\n')
    self._jsonl.flush()

  def write_config(self, step: int, config) -> None:
    """Writes the config as TensorBoard text, indented so it shows as code."""
    if not self.active:
      return
    text = '\n'.join('    ' + line for line in str(config).splitlines())
    self._summary_writer.add_text('config', text, global_step=step)
    self._summary_writer.flush()

  @property
  def closed(self) -> bool:
    return not self.active or self._jsonl.closed

  def close(self) -> None:
    if self.active and not self._jsonl.closed:
      self._summary_writer.close()
      self._jsonl.close()
