"""--mode=compile: the real train and eval steps compiled for a TPU slice or GPU hosts, here.

  python main.py --config=configs/fmnist96.py --workdir=/tmp/tpu --mode=compile \
      --topology=v5litepod-8 [--largest_batch]

No TPU or GPU is needed, as MaxText's train_compile.py compiles for TPUs: libtpu
(requirements.txt) compiles for TPU slices, JAX's CUDA plugin
(requirements-gpu-compile.txt) for NVIDIA GPUs. This compiles
the pmapped train and eval steps of the config's `experiment.build`, the
functions training runs, with its model, dtype and batches: the global batch split over
the chips, each host's share shaped as its input pipeline makes it. It prints a
table and writes WORKDIR/compile.json (compile_report: memory, FLOPs, time
estimates on TPUs only, convolutions, collectives). `--largest_batch` also
finds the largest per-chip batch whose train step fits (largest_batch).
"""

import dataclasses
import functools
import json
import re
import time
from typing import Callable, Sequence

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np

from googlenet_jax import data
from googlenet_jax import experiment
from googlenet_jax import input_pipeline
from googlenet_jax import steps
from googlenet_jax import train_state
from googlenet_jax.errors import UserError
from googlenet_jax.runtime import workdirs
from googlenet_jax.tools import accelerators
from googlenet_jax.tools import compile_report
from googlenet_jax.tools import largest_batch
from googlenet_jax.tools import topologies
from googlenet_jax.tools.accelerators import Accelerator
from googlenet_jax.tools.compile_report import CompiledStep


@dataclasses.dataclass(frozen=True)
class Target:
  """What the steps are compiled for: the accelerator, its devices, the experiment."""
  accelerator: Accelerator
  devices: list[jax.Device]
  experiment: experiment.Experiment  # Built for `devices`, without data.
  state: train_state.TrainState  # Replicated, as ShapeDtypeStructs.
  masked: bool  # The dataset's batches carry 'mask' (data.DatasetSpec.masked).

  @property
  def steps(self) -> dict[str, Callable[[Sequence[jax.Device]], Callable]]:
    """The 'train' and 'eval' steps, each pmapped over given devices."""
    return {'train': functools.partial(steps.pmap_train_step, self.experiment.train_step),
            'eval': functools.partial(steps.pmap_eval_step, self.experiment.eval_step)}


def make_target(config: ml_collections.ConfigDict, accelerator: Accelerator) -> Target:
  """The accelerator's compile-only devices, the config's experiment for them, its state.

  Raises:
    UserError: a batch does not split over the chips.
  """
  devices = topologies.devices(accelerator)
  built = experiment.build(config, devices=devices, load_data=False)
  return Target(accelerator, devices, built, replicated(built.abstract_state(), len(devices)),
                data.spec(config.dataset).masked)


def replicated(tree, num_devices: int):
  """Shapes and dtypes of `tree` with a leading device axis, as pmap takes it."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((num_devices,) + x.shape, x.dtype), tree)


class StandIn(input_pipeline.ArraySource):
  """Zero examples in a dataset's shape, read as its source reads them.

  With `masked`, each batch carries 'mask' (all True), as a streamed source's
  does; only shapes and dtypes matter.
  """

  def __init__(self, num_examples: int, example_shape: tuple[int, int, int],
               masked: bool):
    super().__init__(np.zeros((num_examples, *example_shape), np.uint8),
                     np.zeros(num_examples, np.int32))
    self._masked = masked

  def read(self, index_batches, **kwargs):
    for batch in super().read(index_batches, **kwargs):
      yield {**batch, 'mask': np.ones(len(batch['label']), bool)} if self._masked else batch


def host_batch(target: Target, kind: str, batch_size: int) -> dict:
  """Host 0's first train or eval batch, as its input pipeline shapes it."""
  local = [d for d in target.devices if d.process_index == target.devices[0].process_index]
  source = StandIn(batch_size, target.experiment.example_shape, target.masked)
  kwargs = dict(global_batch_size=batch_size, process_index=0,
                process_count=target.accelerator.hosts, num_local_devices=len(local))
  if kind == 'train':
    return next(input_pipeline.train_batches(source, seed=0, epoch=0, **kwargs))
  return next(input_pipeline.eval_batches(source, **kwargs))


def all_hosts_batch(batch: dict, num_hosts: int):
  """Shapes of the whole batch: every host's share, along the device axis.

  A multi-host run assembles this from each host's batch; this process, alone,
  lowers the pmapped step for all of the chips from it.
  """
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((num_hosts * x.shape[0],) + x.shape[1:], x.dtype),
      batch)


def shapes(batch: dict) -> dict:
  """{name: [shape, dtype]} of one host's batch."""
  return {k: [list(v.shape), str(v.dtype)] for k, v in batch.items()}


class OutOfMemory(UserError):
  """A step that does not fit in a chip's memory; `needed_bytes` if known."""

  def __init__(self, accelerator: Accelerator, kind: str, batch_size: int,
               needed_bytes: int | None):
    super().__init__(compile_report.does_not_fit(accelerator, kind, batch_size, needed_bytes))
    self.needed_bytes = needed_bytes


def compile_step(target: Target, kind: str, batch_size: int) -> CompiledStep:
  """The `kind` step lowered and compiled for the target at `batch_size`.

  Raises:
    OutOfMemory: the step does not fit in a chip's memory.
  """
  batch = host_batch(target, kind, batch_size)
  pmap_step = target.steps[kind]
  args = (target.state, all_hosts_batch(batch, target.accelerator.hosts))
  start = time.perf_counter()
  lowered = pmap_step(target.devices).lower(*args)
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    raise OutOfMemory(target.accelerator, kind, batch_size, _bytes_needed(str(e))) from e
  seconds = time.perf_counter() - start
  memory = compile_report.memory_per_chip(compiled, target.accelerator.chip)
  if not memory['fits']:
    raise OutOfMemory(target.accelerator, kind, batch_size, memory['needed_bytes'])
  return CompiledStep(kind, batch_size, batch, pmap_step, args, lowered, compiled, seconds,
                      memory)


def _bytes_needed(message: str) -> int | None:
  """The bytes an out-of-memory TPU compile needed, from XLA's message, if it says."""
  match = re.search(r'required for HLO temporaries \(([\d.]+)([KMGT]?)\)', message)
  if not match:
    return None
  scale = {'K': 2**10, 'M': 2**20, 'G': 2**30, 'T': 2**40, '': 1}[match.group(2)]
  return int(float(match.group(1)) * scale)


def compile_steps(target: Target) -> dict:
  """Compiles the train and eval steps for the target; their report as a dict.

  Raises:
    UserError: a step does not fit.
  """
  train = compile_step(target, 'train', target.experiment.batch_size)
  evaluation = compile_step(target, 'eval', target.experiment.eval_batch_size)
  accelerator = target.accelerator
  return {'info': compile_report.describe(target.experiment, accelerator, target.devices),
          'input_shapes': {'train': shapes(train.host_batch),
                           'eval': shapes(evaluation.host_batch)},
          'train': compile_report.analyse(accelerator, train),
          'eval': compile_report.analyse(accelerator, evaluation)}


def compile_and_report(config: ml_collections.ConfigDict, workdir: str,
                       topology: str, find_largest_batch: bool = False) -> dict:
  """--mode=compile: compiles for `topology`, prints the table, writes WORKDIR/compile.json."""
  accelerator = accelerators.get(topology)
  workdirs.create(workdir)
  target = make_target(config, accelerator)
  report = compile_steps(target)
  if find_largest_batch:
    report['largest_batch'] = largest_batch.find(
        report, lambda per_chip: train_step_memory(target, per_chip),
        accelerator)
  path = epath.Path(workdir) / 'compile.json'
  path.write_text(json.dumps(report, indent=2))
  print(compile_report.format_table(report))
  logging.info('Wrote %s.', path)
  return report


def train_step_memory(target: Target, per_chip_batch: int) -> dict:
  """The train step compiled at `per_chip_batch`: what a chip needs, whether it fits."""
  start = time.perf_counter()
  try:
    step = compile_step(target, 'train', per_chip_batch * len(target.devices))
  except OutOfMemory as e:
    return {'per_chip_batch_size': per_chip_batch, 'needed_bytes': e.needed_bytes,
            'fits': False, 'compile_s': time.perf_counter() - start}
  return {'per_chip_batch_size': per_chip_batch,
          'needed_bytes': step.memory['needed_bytes'], 'fits': True,
          'compile_s': step.seconds}
