"""--mode=compile: the real train and eval steps compiled for a TPU slice or GPU hosts, here.

  python main.py --config=configs/fmnist96.py --workdir=/tmp/tpu --mode=compile \
      --topology=v5litepod-8 [--largest_batch]

No TPU or GPU is needed, as MaxText's train_compile.py compiles for TPUs: libtpu
(requirements.txt) compiles for TPU slices, JAX's CUDA plugin
(requirements-gpu-compile.txt) for NVIDIA GPUs. This compiles
`steps.pmap_train_step` and `steps.pmap_eval_step`, the functions training
runs, with the config's model, dtype and batches: the global batch split over
the chips, each host's share shaped as its input pipeline makes it. It prints a
table and writes WORKDIR/compile.json: what each step needs of a chip's memory,
its FLOPs, the dtypes of its convolutions, its collectives and its compile time.
On TPUs, step times and images/s come from XLA's cost model: estimates, never
measurements. On GPUs there is no time estimate, no autotuning and nothing
runs; whether a step fits is a rule (accelerators.Chip.usable_fraction).
`--largest_batch` also finds the largest per-chip batch whose train step fits.
"""

import dataclasses
import json
import re
import time
from importlib import metadata

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np

from googlenet_jax import accelerators
from googlenet_jax import hlo_stats
from googlenet_jax import input_pipeline
from googlenet_jax import largest_batch
from googlenet_jax import steps
from googlenet_jax import topologies
from googlenet_jax import train_state
from googlenet_jax import validation
from googlenet_jax import workdirs
from googlenet_jax.accelerators import Accelerator, GiB
from googlenet_jax.errors import UserError
from googlenet_jax.models import conv_lowering

ESTIMATE = "estimate from XLA's cost model, not a measurement"
NO_ESTIMATE = "none: XLA's GPU compiler has no cost model to ask"
NOT_DONE_ON_GPU = (
    'no time estimate: XLA gives none for GPUs',
    'no autotuning: without a GPU, XLA takes default cuDNN algorithms and gives '
    'them no workspace',
    'nothing run: the figures are the compiler\'s',
)
GPU_FLOPS = ("XLA's CPU cost analysis of the unoptimised step (XLA's GPU compiler "
             'gives none)')
STEP_FUNCTIONS = {'train': steps.pmap_train_step, 'eval': steps.pmap_eval_step}


def fit_rule(chip: accelerators.Chip) -> str:
  """How a GPU step is judged to fit: a rule, since a GPU compile never fails for memory."""
  return (f"its arguments, outputs and temporaries take at most "
          f"{chip.usable_fraction:.0%} of the GPU's memory, what JAX preallocates "
          "by default (XLA_PYTHON_CLIENT_MEM_FRACTION); cuDNN's workspaces are "
          'not counted (nothing autotuned)')


@dataclasses.dataclass(frozen=True)
class Target:
  """What the steps are compiled for: the accelerator, its devices, the state's shapes."""
  accelerator: Accelerator
  devices: list[jax.Device]
  state: train_state.TrainState  # Replicated, as ShapeDtypeStructs.


def make_target(config: ml_collections.ConfigDict, accelerator: Accelerator) -> Target:
  """The accelerator's compile-only devices and the train state replicated over them."""
  devices = topologies.devices(accelerator)
  model = train_state.create_model(config, platform=devices[0].platform)
  state = replicated(train_state.abstract_train_state(config, model), len(devices))
  return Target(accelerator, devices, state)


def replicated(tree, num_devices: int):
  """Shapes and dtypes of `tree` with a leading device axis, as pmap takes it."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((num_devices,) + x.shape, x.dtype), tree)


def host_batch(config: ml_collections.ConfigDict, target: Target, kind: str,
               batch_size: int) -> dict:
  """Host 0's first train or eval batch, as its input pipeline shapes it.

  Zero images stand in for Fashion-MNIST: only shapes and dtypes matter.
  """
  local = [d for d in target.devices if d.process_index == target.devices[0].process_index]
  source = input_pipeline.ArraySource(np.zeros((batch_size, 28, 28, 1), np.uint8),
                                      np.zeros(batch_size, np.int32))
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

  def __init__(self, message: str, needed_bytes: int | None):
    super().__init__(message)
    self.needed_bytes = needed_bytes


@dataclasses.dataclass(frozen=True)
class CompiledStep:
  kind: str  # 'train' or 'eval'.
  batch_size: int
  host_batch: dict
  lowered: jax.stages.Lowered
  compiled: jax.stages.Compiled
  seconds: float
  memory: dict  # memory_per_chip's.


def compile_step(config: ml_collections.ConfigDict, target: Target, kind: str,
                 batch_size: int) -> CompiledStep:
  """The `kind` step lowered and compiled for the target at `batch_size`.

  Raises:
    OutOfMemory: the step does not fit in a chip's memory.
  """
  batch = host_batch(config, target, kind, batch_size)
  step = STEP_FUNCTIONS[kind](config, target.devices)
  start = time.perf_counter()
  lowered = step.lower(target.state, all_hosts_batch(batch, target.accelerator.hosts))
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    needed = _bytes_needed(str(e))
    raise OutOfMemory(does_not_fit(target.accelerator, kind, batch_size, needed), needed) from e
  seconds = time.perf_counter() - start
  memory = memory_per_chip(compiled, target.accelerator.chip)
  if not memory['fits']:
    raise OutOfMemory(does_not_fit(target.accelerator, kind, batch_size,
                                   memory['needed_bytes']), memory['needed_bytes'])
  return CompiledStep(kind, batch_size, batch, lowered, compiled, seconds, memory)


def does_not_fit(accelerator: Accelerator, kind: str, batch_size: int,
                 needed: int | None) -> str:
  """The one line for a step that does not fit in a chip's memory."""
  chip = accelerator.chip
  start = (f'The {kind} step at batch {batch_size} ({batch_size // accelerator.chips} '
           f'per chip) does not fit on {accelerator.name}: a chip would need ')
  end = '; use a smaller --config.batch_size.'
  if accelerator.platform == 'gpu':
    return (start + f'{_gib(needed)} and a step may use {_gib(chip.usable_bytes)} '
            f'({chip.usable_fraction:.0%} of its {_gib(chip.hbm_bytes)}, what JAX '
            'preallocates)' + end)
  return (start + (f'{_gib(needed)} of HBM for temporaries alone' if needed else 'more HBM')
          + f' and has {_gib(chip.hbm_bytes)}' + end)


def _bytes_needed(message: str) -> int | None:
  """The bytes an out-of-memory TPU compile needed, from XLA's message, if it says."""
  match = re.search(r'required for HLO temporaries \(([\d.]+)([KMGT]?)\)', message)
  if not match:
    return None
  scale = {'K': 2**10, 'M': 2**20, 'G': 2**30, 'T': 2**40, '': 1}[match.group(2)]
  return int(float(match.group(1)) * scale)


def _gib(num_bytes: float) -> str:
  return f'{num_bytes / GiB:.2f} GiB'


def memory_per_chip(compiled_step, chip: accelerators.Chip) -> dict:
  """What a compiled step needs of one chip's memory: buffers, temporaries and code."""
  memory = compiled_step.memory_analysis()
  # Outputs aliased to (donated) arguments take no memory of their own.
  needed = (memory.argument_size_in_bytes + memory.output_size_in_bytes
            - memory.alias_size_in_bytes + memory.temp_size_in_bytes
            + memory.generated_code_size_in_bytes)
  result = {'argument_bytes': memory.argument_size_in_bytes,
            'output_bytes': memory.output_size_in_bytes,
            'alias_bytes': memory.alias_size_in_bytes,
            'temp_bytes': memory.temp_size_in_bytes,
            'code_bytes': memory.generated_code_size_in_bytes,
            'needed_bytes': needed, 'hbm_bytes': chip.hbm_bytes,
            'fits': needed <= chip.usable_bytes}
  if chip.platform == 'gpu':
    result.update(usable_bytes=chip.usable_bytes, fit_rule=fit_rule(chip))
  return result


def compile_steps(config: ml_collections.ConfigDict, target: Target) -> dict:
  """Compiles the train and eval steps for the target; their report as a dict.

  Raises:
    UserError: a batch does not split over the chips, or a step does not fit.
  """
  for field in ('batch_size', 'eval_batch_size'):
    validation.check_batch_size(config[field], len(target.devices), field)
  train = compile_step(config, target, 'train', config.batch_size)
  evaluation = compile_step(config, target, 'eval', config.eval_batch_size)
  return {'info': describe(config, target),
          'input_shapes': {'train': shapes(train.host_batch),
                           'eval': shapes(evaluation.host_batch)},
          'train': analyse(config, target, train),
          'eval': analyse(config, target, evaluation)}


def describe(config: ml_collections.ConfigDict, target: Target) -> dict:
  """What was compiled, for what, when; key names as the benchmark's JSON."""
  accelerator, devices = target.accelerator, target.devices
  info = {
      'date_utc': time.strftime('%Y-%m-%d %H:%M', time.gmtime()),
      'topology': accelerator.name, 'topology_name': accelerator.topology,
      'device': devices[0].device_kind,
      'num_devices': len(devices), 'chips': len(devices), 'hosts': accelerator.hosts,
      'hbm_bytes_per_chip': accelerator.chip.hbm_bytes,
      'peak_flops_per_chip': accelerator.chip.peak_flops,
      'jax': jax.__version__, 'model': config.model, 'dtype': config.dtype,
      'convolutions': ('matmuls' if conv_lowering.uses_matmuls(
          config.conv_lowering, devices[0].platform) else 'lax.conv'),
      'batch_size': config.batch_size,
      'per_chip_batch_size': config.batch_size // len(devices),
      'eval_batch_size': config.eval_batch_size, 'image_size': config.image_size,
  }
  if accelerator.platform == 'tpu':
    info.update(chip_config=accelerator.chip.chip_config,
                libtpu=metadata.version('libtpu'))
  else:
    info.update(jax_cuda12_plugin=metadata.version('jax-cuda12-plugin'),
                gpu_spec=accelerator.chip.spec_file,
                not_done=list(NOT_DONE_ON_GPU))
  return info


def analyse(config: ml_collections.ConfigDict, target: Target, step: CompiledStep) -> dict:
  """A compiled step's memory, FLOPs, time estimate, convolutions and collectives."""
  text = step.compiled.as_text()
  report = {
      'compile_s': step.seconds,
      'memory_per_chip': step.memory,
      'convolution_operand_dtypes': hlo_stats.lowered_convolution_dtypes(
          step.lowered.as_text()),
      'max_pool_ops': hlo_stats.max_pool_ops(text),
      'collectives': hlo_stats.collectives(text),
      'collective_group_sizes': hlo_stats.collective_group_sizes(text),
  }
  if target.accelerator.platform == 'tpu':
    report.update(tpu_analysis(step, target))
  else:
    report.update(gpu_analysis(config, target, step))
  return report


def tpu_analysis(step: CompiledStep, target: Target) -> dict:
  """XLA's TPU cost analysis of a compiled step, and its convolutions' operand dtypes."""
  cost = step.compiled.cost_analysis()
  flops_per_chip = float(cost['flops'])
  seconds = step_seconds_estimate(cost.get('optimal_seconds'), flops_per_chip,
                                  target.accelerator.chip)
  return {
      'flops': flops_per_chip * len(target.devices), 'flops_per_chip': flops_per_chip,
      'cost_model': {
          'note': ESTIMATE,
          'optimal_seconds': cost.get('optimal_seconds'),
          'step_seconds_estimate': seconds,
          'images_per_sec_estimate': step.batch_size / seconds if seconds else None},
      'compiled_convolution_operand_dtypes': hlo_stats.convolution_dtypes(
          step.compiled.as_text()),
  }


def gpu_analysis(config: ml_collections.ConfigDict, target: Target,
                 step: CompiledStep) -> dict:
  """A compiled GPU step's FLOPs and cuDNN calls; no cost model exists to ask."""
  flops_per_chip = unoptimised_flops_per_chip(config, target, step)
  text = step.compiled.as_text()
  return {
      'flops': flops_per_chip * len(target.devices), 'flops_per_chip': flops_per_chip,
      'flops_source': GPU_FLOPS,
      'cost_model': {'note': NO_ESTIMATE, 'step_seconds_estimate': None,
                     'images_per_sec_estimate': None},
      'cudnn_calls': hlo_stats.cudnn_calls(text),
      'cudnn_workspace_bytes': hlo_stats.cudnn_workspace_bytes(text),
  }


def unoptimised_flops_per_chip(config: ml_collections.ConfigDict, target: Target,
                               step: CompiledStep) -> float:
  """One chip's FLOPs of the step, by XLA's CPU cost analysis before optimisation.

  The same step pmapped over one CPU device, with one chip's share of the
  state and batch, is the per-chip program that JAX hands XLA for the GPUs.
  """
  one_chip = lambda tree: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((1,) + x.shape[1:], x.dtype), tree)
  batch = all_hosts_batch(step.host_batch, target.accelerator.hosts)
  lowered = STEP_FUNCTIONS[step.kind](config, jax.devices('cpu')[:1]).lower(
      one_chip(target.state), one_chip(batch))
  return float(lowered.cost_analysis()['flops'])


def step_seconds_estimate(optimal_seconds: float | None, flops_per_chip: float,
                          chip: accelerators.Chip) -> float | None:
  """XLA's cost-model step time, or None where it cannot be right.

  XLA's figure is sometimes negative (at large batches), and never valid when it
  is faster than the FLOPs at the chip's peak.
  """
  if optimal_seconds is None or optimal_seconds <= 0:
    return None
  if flops_per_chip / optimal_seconds > chip.peak_flops:
    return None
  return float(optimal_seconds)


def compile_and_report(config: ml_collections.ConfigDict, workdir: str,
                       topology: str, find_largest_batch: bool = False) -> dict:
  """--mode=compile: compiles for `topology`, prints the table, writes WORKDIR/compile.json."""
  validation.check_config(config)
  accelerator = accelerators.get(topology)
  workdirs.create(workdir)
  target = make_target(config, accelerator)
  report = compile_steps(config, target)
  if find_largest_batch:
    report['largest_batch'] = largest_batch.find(
        report, lambda per_chip: train_step_memory(config, target, per_chip),
        accelerator)
  path = epath.Path(workdir) / 'compile.json'
  path.write_text(json.dumps(report, indent=2))
  print(format_table(report))
  logging.info('Wrote %s.', path)
  return report


def train_step_memory(config: ml_collections.ConfigDict, target: Target,
                      per_chip_batch: int) -> dict:
  """The train step compiled at `per_chip_batch`: what a chip needs, whether it fits."""
  start = time.perf_counter()
  try:
    step = compile_step(config, target, 'train', per_chip_batch * len(target.devices))
  except OutOfMemory as e:
    return {'per_chip_batch_size': per_chip_batch, 'needed_bytes': e.needed_bytes,
            'fits': False, 'compile_s': time.perf_counter() - start}
  return {'per_chip_batch_size': per_chip_batch,
          'needed_bytes': step.memory['needed_bytes'], 'fits': True,
          'compile_s': step.seconds}


def estimate(cost: dict) -> str:
  """The cost model's images/s as the table gives it."""
  if cost['images_per_sec_estimate'] is not None:
    return (f"{cost['images_per_sec_estimate']:,.0f} (XLA cost model, "
            f"{1000 * cost['step_seconds_estimate']:.2f} ms/step, not measured)")
  return 'no estimate' if cost['note'] == ESTIMATE else cost['note']


def format_table(report: dict) -> str:
  """The report as a plain-text table."""
  info = report['info']
  rows = [
      ('compiled for', f"{info['topology']} ({info['topology_name']}): {info['chips']} x "
                       f"{info['device']} on {info['hosts']} host(s)"),
      ('model, dtype, image size', f"{info['model']}, {info['dtype']}, {info['image_size']}"),
      ('batch (per chip)', f"{info['batch_size']} ({info['per_chip_batch_size']}), "
                           f"eval {info['eval_batch_size']}"),
      ('per-host train input', ', '.join(
          f'{k} {tuple(shape)} {dtype}'
          for k, (shape, dtype) in report['input_shapes']['train'].items())),
  ]
  for name in ('train', 'eval'):
    rows += step_rows(name, report[name])
  if 'largest_batch' in report:
    largest = report['largest_batch']
    rows.append(('largest batch that fits',
                 f"{largest['batch_size']} ({largest['per_chip_batch_size']} per chip, "
                 f"{_gib(largest['needed_bytes'])} of HBM)"))
  if 'fit_rule' in report['train']['memory_per_chip']:
    rows.append(('a step fits if', report['train']['memory_per_chip']['fit_rule']))
  if 'not_done' in info:
    rows.append(('not done', '; '.join(info['not_done'])))
  return '\n'.join(f'{name:<28}{value}' for name, value in rows)


def step_rows(name: str, step: dict) -> list[tuple[str, str]]:
  """The table's rows for one compiled step."""
  memory, cost = step['memory_per_chip'], step['cost_model']
  of = (f"{_gib(memory['usable_bytes'])} usable "
        f"({memory['usable_bytes'] / memory['hbm_bytes']:.0%} of {_gib(memory['hbm_bytes'])})"
        if 'usable_bytes' in memory else _gib(memory['hbm_bytes']))
  rows = [
      (f'{name}: compile (s)', f"{step['compile_s']:.1f}"),
      (f'{name}: HBM per chip', f"{_gib(memory['needed_bytes'])} of {of} (arguments "
                                f"{_gib(memory['argument_bytes'])}, temporaries "
                                f"{_gib(memory['temp_bytes'])})"),
      (f'{name}: GFLOP per step', f"{step['flops'] / 1e9:.1f} "
                                  f"({step['flops_per_chip'] / 1e9:.2f} per chip)"),
      (f'{name}: images/s (estimate)', estimate(cost)),
      (f'{name}: convolutions', ', '.join(
          f'{n} {dtype}' for dtype, n in step['convolution_operand_dtypes'].items())
       or 'none'),
  ]
  if 'cudnn_calls' in step:
    rows.append((f'{name}: cuDNN calls', ', '.join(
        f'{n} {kind} {dtype}' for kind, by_dtype in step['cudnn_calls'].items()
        for dtype, n in by_dtype.items()) or 'none'))
  rows.append((f'{name}: collectives', ', '.join(
      f'{n} {op}' for op, n in step['collectives'].items()) or 'none'))
  return rows
