"""Scalars and the config to TensorBoard (tensorboardX, no TensorFlow); scalars also
to WORKDIR/metrics.jsonl."""

import json
import os
from typing import Mapping

from tensorboardX import SummaryWriter


class MetricWriter:
  """Writes each step's scalars as TensorBoard events and as one JSON line."""

  def __init__(self, workdir: str):
    os.makedirs(workdir, exist_ok=True)
    self._summary_writer = SummaryWriter(logdir=workdir)
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    for name, value in scalars.items():
      self._summary_writer.add_scalar(name, value, global_step=step)
    self._summary_writer.flush()
    self._jsonl.write(json.dumps({'step': step, **scalars}) + '\n')
    self._jsonl.flush()

  def write_config(self, step: int, config) -> None:
    """Writes the config as TensorBoard text, indented so it shows as code."""
    text = '\n'.join('    ' + line for line in str(config).splitlines())
    self._summary_writer.add_text('config', text, global_step=step)
    self._summary_writer.flush()

  def close(self) -> None:
    self._summary_writer.close()
    self._jsonl.close()
