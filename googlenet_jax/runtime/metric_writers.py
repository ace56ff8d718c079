"""Scalars and the config to TensorBoard (tensorboardX, no TensorFlow); scalars also
to WORKDIR/metrics.jsonl. WORKDIR may be a local path or a gs:// URL (etils.epath)."""

import json
import os
import shutil
import tempfile
from typing import Mapping

from absl import logging
from etils import epath
from tensorboardX import SummaryWriter

from googlenet_jax.runtime import workdirs


def drop_cut_line(path: epath.Path) -> None:
  """Removes a last line cut short, which a full disk leaves (a write stops at the last
  free block), so that the next line does not join it; its epoch is logged again."""
  text = path.read_text() if path.exists() else ''
  if text and not text.endswith('\n'):
    logging.warning('%s ended in a line cut short (a write that failed, as on a full '
                    'disk): removed it.', path)
    os.truncate(path, len(text[:text.rfind('\n') + 1].encode()))


class MetricWriter:
  """Writes each step's scalars as TensorBoard events and as one JSON line.

  Use it as a context manager, so that it is closed however the run ends. An
  inactive writer (every process but the first of a multi-host run) writes nothing.

  A local metrics.jsonl is appended to. GCS objects cannot be appended to, so in
  a gs:// workdir it is uploaded whole after each line (an upload lands whole or
  not at all). The event file of a gs:// workdir is written in a local directory
  and copied to the workdir after every flush (tensorboardX's own gs:// writer
  uploads again when it is garbage collected, and waits minutes if it cannot).
  """

  def __init__(self, workdir: str, active: bool = True):
    self.active = active
    self._closed = not active
    if active:
      self._workdir = epath.Path(workdir)
      self._workdir.mkdir(parents=True, exist_ok=True)
      self._events_dir = (tempfile.mkdtemp(prefix='googlenet_jax_events_')
                          if workdirs.is_url(workdir) else workdir)
      self._summary_writer = SummaryWriter(logdir=self._events_dir)
      self._jsonl = self._workdir / 'metrics.jsonl'
      if workdirs.is_url(workdir):
        self._lines = self._jsonl.read_text() if self._jsonl.exists() else ''
        self._jsonl.write_text(self._lines)  # There from the start, as a log file.
      else:
        drop_cut_line(self._jsonl)
        self._jsonl_file = open(self._jsonl, 'a')

  def __enter__(self) -> 'MetricWriter':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.active:
      return
    for name, value in scalars.items():
      self._summary_writer.add_scalar(name, value, global_step=step)
    self._flush_events()
    line = json.dumps({'step': step, **scalars}) + '\n'
    if workdirs.is_url(self._workdir):
      self._lines += line
      self._jsonl.write_text(self._lines)
    else:
      self._jsonl_file.write(line)
      self._jsonl_file.flush()

  def has_step(self, step: int) -> bool:
    """Whether metrics.jsonl has a line of `step`; an inactive writer says False."""
    if not (self.active and self._jsonl.exists()):
      return False
    return any(json.loads(line)['step'] == step
               for line in self._jsonl.read_text().splitlines())

  def write_config(self, step: int, config_text: str) -> None:
    """Writes the config's text to TensorBoard, indented so it shows as code."""
    if not self.active:
      return
    text = '\n'.join('    ' + line for line in config_text.splitlines())
    self._summary_writer.add_text('config', text, global_step=step)
    self._flush_events()

  def _flush_events(self) -> None:
    self._summary_writer.flush()
    self._copy_events()

  def _copy_events(self) -> None:
    """Copies the local event file to a gs:// workdir, whole."""
    if workdirs.is_url(self._workdir):
      for name in os.listdir(self._events_dir):
        with open(os.path.join(self._events_dir, name), 'rb') as f:
          (self._workdir / name).write_bytes(f.read())

  @property
  def closed(self) -> bool:
    return self._closed

  def close(self) -> None:
    if not self._closed:
      self._summary_writer.close()
      self._copy_events()
      if workdirs.is_url(self._workdir):
        shutil.rmtree(self._events_dir)
      else:
        self._jsonl_file.close()
      self._closed = True
