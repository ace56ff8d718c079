"""The real train and eval steps compiled for a Cloud TPU slice, on this host: no TPU needed.

  python main.py --config=configs/fmnist96.py --workdir=/tmp/tpu --mode=compile \
      --topology=v5litepod-8 [--largest_batch]

libtpu (in requirements.txt) compiles for a TPU topology on a machine without
a TPU, as MaxText's train_compile.py does. This compiles `steps.pmap_train_step`
and `steps.pmap_eval_step`, the functions training runs, with the config's
model, dtype and batches: the global batch split over the slice's chips, each
host's share shaped as its input pipeline makes it. It prints a table and
writes WORKDIR/compile.json: what each step needs of a chip's memory, its FLOPs,
the dtypes of its convolutions, its collectives and its compile time. Step
times and images/s come from XLA's cost model: estimates, never measurements.
`--largest_batch` also finds the largest per-chip batch whose train step fits.
"""

import dataclasses
import json
import math
import os
import re
import time
from typing import Callable

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np

from googlenet_jax import input_pipeline
from googlenet_jax import steps
from googlenet_jax import train_state
from googlenet_jax import validation
from googlenet_jax import workdirs
from googlenet_jax.errors import UserError
from googlenet_jax.models import conv_lowering

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class TpuSlice:
  """A Cloud TPU accelerator type, as JAX's topology description names its chips."""
  topology: str  # JAX's topology name: generation and chip grid.
  chip_config: str  # 'megacore': a chip's two TensorCores are one JAX device.
  chips_per_host: tuple[int, int, int]  # The chip grid of one host (VM).
  chips: int
  hbm_bytes: int  # One chip's HBM, as XLA's TPU compiler allots it.
  peak_flops: float  # One chip's bfloat16 matmul peak (Cloud TPU docs).

  @property
  def hosts(self) -> int:
    return self.chips // math.prod(self.chips_per_host)


# gcloud's --accelerator-type names. Those of v4 and v5p count TensorCores, two
# per chip (v4-8 is 4 chips); those of v5e (v5litepod) and v6e count chips.
# Topologies and chip configs as MaxText's accelerator_to_spec_map.py; hosts as
# Cloud TPU VMs have them: the -8 slices of v5e and v6e are one 8-chip host,
# larger ones 4 chips a host, as v4 and v5p. HBM is what XLA's TPU compiler
# (libtpu 0.0.42.1) says a chip has when a program does not fit.
SLICES = {
    'v4-8': TpuSlice('v4:2x2x1', 'megacore', (2, 2, 1), 4, int(30.75 * GiB), 275e12),
    'v4-16': TpuSlice('v4:2x2x2', 'megacore', (2, 2, 1), 8, int(30.75 * GiB), 275e12),
    'v5litepod-8': TpuSlice('v5e:2x4', 'default', (2, 4, 1), 8, int(15.75 * GiB), 197e12),
    'v5litepod-16': TpuSlice('v5e:4x4', 'default', (2, 2, 1), 16, int(15.75 * GiB),
                             197e12),
    'v5p-8': TpuSlice('v5p:2x2x1', 'megacore', (2, 2, 1), 4, int(95.74 * GiB), 459e12),
    'v6e-8': TpuSlice('v6e:2x4', 'default', (2, 4, 1), 8, int(31.25 * GiB), 918e12),
}

COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'collective-permute',
               'all-to-all')
ESTIMATE = "estimate from XLA's cost model, not a measurement"


def tpu_slice(accelerator_type: str) -> TpuSlice:
  """The slice named `accelerator_type`; UserError listing the known names if unknown."""
  if not accelerator_type:
    raise UserError(f'--mode=compile needs --topology, one of {", ".join(SLICES)}.')
  if accelerator_type not in SLICES:
    raise UserError(f'Unknown --topology {accelerator_type!r}: choose one of '
                    f'{", ".join(SLICES)} (Cloud TPU accelerator types).')
  return SLICES[accelerator_type]


def prepare_host(accelerator_type: str) -> None:
  """Sets up this process to compile for TPUs; call before JAX starts any backend.

  JAX computes on this host's CPU only (a TPU VM's own chips are left alone),
  libtpu asks no metadata server (a laptop has none: the compile never reaches
  the network), and it loads even while another JAX process on the machine
  holds libtpu's lock file.
  """
  tpu_slice(accelerator_type)
  os.environ['TPU_SKIP_MDS_QUERY'] = '1'
  os.environ['ALLOW_MULTIPLE_LIBTPU_LOAD'] = '1'
  # What the metadata server would have said; without them libtpu warns in
  # several lines that it could not ask.
  os.environ['TPU_ACCELERATOR_TYPE'] = accelerator_type
  os.environ['TPU_WORKER_HOSTNAMES'] = 'localhost'
  jax.config.update('jax_platforms', 'cpu')


def tpu_devices(accelerator_type: str) -> list[jax.Device]:
  """Compile-only devices of the slice, one per chip, of every host."""
  spec = tpu_slice(accelerator_type)
  try:
    import libtpu  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise UserError('Compiling for a TPU needs libtpu, which is not installed: '
                    'pip install -r requirements.txt (libtpu==0.0.42.1).') from e
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    topology = topologies.get_topology_desc(
        platform='tpu', topology_name=spec.topology, chip_config_name=spec.chip_config,
        chips_per_host_bounds=spec.chips_per_host, num_slices=1)
  except jax.errors.JaxRuntimeError as e:
    raise UserError(f'libtpu could not describe {accelerator_type} '
                    f'({spec.topology}): {str(e).splitlines()[0]}') from e
  return list(topology.devices)


def host_batches(config: ml_collections.ConfigDict, devices: list[jax.Device],
                 batch_size: int) -> tuple[dict, dict]:
  """Host 0's first train and eval batch, as its input pipeline shapes them.

  Zero images stand in for Fashion-MNIST: only shapes and dtypes matter.
  """
  num_hosts = len({d.process_index for d in devices})
  local = [d for d in devices if d.process_index == devices[0].process_index]
  kwargs = dict(process_index=0, process_count=num_hosts,
                num_local_devices=len(local))
  def source(n):
    return input_pipeline.ArraySource(np.zeros((n, 28, 28, 1), np.uint8),
                                      np.zeros(n, np.int32))
  train = next(input_pipeline.train_batches(
      source(batch_size), global_batch_size=batch_size, seed=0, epoch=0, **kwargs))
  evaluation = next(input_pipeline.eval_batches(
      source(config.eval_batch_size), global_batch_size=config.eval_batch_size,
      **kwargs))
  return train, evaluation


def replicated(tree, num_devices: int):
  """Shapes and dtypes of `tree` with a leading device axis, as pmap takes it."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((num_devices,) + x.shape, x.dtype), tree)


def slice_batch(host_batch: dict, num_hosts: int):
  """Shapes of the whole slice's batch: every host's share, along the device axis.

  A multi-host run assembles this from each host's batch; this process, alone,
  lowers the pmapped step for all of the slice's chips from it.
  """
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((num_hosts * x.shape[0],) + x.shape[1:], x.dtype),
      host_batch)


def abstract_state(config: ml_collections.ConfigDict, platform: str,
                   num_devices: int) -> train_state.TrainState:
  """The replicated train state's shapes, its model in `platform`'s form."""
  model = train_state.create_model(config, platform=platform)
  return replicated(train_state.abstract_train_state(config, model), num_devices)


def compile_steps(config: ml_collections.ConfigDict, accelerator_type: str,
                  batch_size: int | None = None) -> dict:
  """Compiles the train and eval steps for the slice; their report as a dict.

  Raises:
    UserError: the batch does not split over the chips, or a step does not fit
      in a chip's HBM.
  """
  spec = tpu_slice(accelerator_type)
  batch_size = batch_size or config.batch_size
  devices = tpu_devices(accelerator_type)
  for field, size in (('batch_size', batch_size),
                      ('eval_batch_size', config.eval_batch_size)):
    validation.check_batch_size(size, len(devices), field)
  train_batch, eval_batch = host_batches(config, devices, batch_size)
  num_hosts = spec.hosts
  state = abstract_state(config, devices[0].platform, len(devices))
  report = {'info': describe(config, accelerator_type, devices, batch_size),
            'input_shapes': {'train': shapes(train_batch), 'eval': shapes(eval_batch)}}
  report['train'] = analyse(
      *compiled(steps.pmap_train_step(config, devices), state,
                slice_batch(train_batch, num_hosts), spec, accelerator_type, 'train',
                batch_size),
      spec, batch_size)
  report['eval'] = analyse(
      *compiled(steps.pmap_eval_step(config, devices), state,
                slice_batch(eval_batch, num_hosts), spec, accelerator_type, 'eval',
                config.eval_batch_size),
      spec, config.eval_batch_size)
  return report


def describe(config: ml_collections.ConfigDict, accelerator_type: str,
             devices: list[jax.Device], batch_size: int) -> dict:
  """What was compiled, for what, when; key names as the benchmark's JSON."""
  spec = SLICES[accelerator_type]
  return {
      'date_utc': time.strftime('%Y-%m-%d %H:%M', time.gmtime()),
      'topology': accelerator_type, 'topology_name': spec.topology,
      'chip_config': spec.chip_config, 'device': devices[0].device_kind,
      'num_devices': len(devices), 'chips': len(devices),
      'hosts': len({d.process_index for d in devices}),
      'hbm_bytes_per_chip': spec.hbm_bytes, 'peak_flops_per_chip': spec.peak_flops,
      'jax': jax.__version__, 'libtpu': _libtpu_version(), 'model': config.model,
      'dtype': config.dtype,
      'convolutions': ('matmuls' if conv_lowering.uses_matmuls(
          config.conv_lowering, devices[0].platform) else 'lax.conv'),
      'batch_size': batch_size, 'per_chip_batch_size': batch_size // len(devices),
      'eval_batch_size': config.eval_batch_size, 'image_size': config.image_size,
  }


def _libtpu_version() -> str:
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  return metadata.version('libtpu')


def shapes(batch: dict) -> dict:
  """{name: [shape, dtype]} of one host's batch."""
  return {k: [list(v.shape), str(v.dtype)] for k, v in batch.items()}


class OutOfMemory(UserError):
  """A step that does not fit in a chip's HBM; `needed_bytes` as XLA says, if it does."""

  def __init__(self, message: str, needed_bytes: int | None):
    super().__init__(message)
    self.needed_bytes = needed_bytes


def compiled(step: Callable, state, batch, spec: TpuSlice, accelerator_type: str,
             name: str, batch_size: int):
  """(`step` lowered for `state` and `batch`, compiled, seconds); OutOfMemory if it does not fit."""
  start = time.perf_counter()
  lowered = step.lower(state, batch)
  try:
    result = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    needed = _bytes_needed(str(e))
    raise OutOfMemory(
        f'The {name} step at batch {batch_size} ({batch_size // spec.chips} per chip) '
        f'does not fit on {accelerator_type}: a chip would need '
        + (f'{_gib(needed)} of HBM for temporaries alone' if needed else 'more HBM')
        + f' and has {_gib(spec.hbm_bytes)}; use a smaller --config.batch_size.',
        needed) from e
  return lowered, result, time.perf_counter() - start


def _bytes_needed(message: str) -> int | None:
  """The bytes an out-of-memory compile needed, from XLA's message, if it says."""
  match = re.search(r'required for HLO temporaries \(([\d.]+)([KMGT]?)\)', message)
  if not match:
    return None
  scale = {'K': 2**10, 'M': 2**20, 'G': 2**30, 'T': 2**40, '': 1}[match.group(2)]
  return int(float(match.group(1)) * scale)


def _gib(num_bytes: float) -> str:
  return f'{num_bytes / GiB:.2f} GiB'


def memory_per_chip(compiled_step, spec: TpuSlice) -> dict:
  """What a compiled step needs of one chip's HBM: buffers, temporaries and code."""
  memory = compiled_step.memory_analysis()
  # Outputs aliased to (donated) arguments take no memory of their own.
  needed = (memory.argument_size_in_bytes + memory.output_size_in_bytes
            - memory.alias_size_in_bytes + memory.temp_size_in_bytes
            + memory.generated_code_size_in_bytes)
  return {'argument_bytes': memory.argument_size_in_bytes,
          'output_bytes': memory.output_size_in_bytes,
          'alias_bytes': memory.alias_size_in_bytes,
          'temp_bytes': memory.temp_size_in_bytes,
          'code_bytes': memory.generated_code_size_in_bytes,
          'needed_bytes': needed, 'hbm_bytes': spec.hbm_bytes,
          'fits': needed <= spec.hbm_bytes}


def analyse(lowered_step, compiled_step, compile_s: float, spec: TpuSlice,
            batch_size: int) -> dict:
  """A compiled step's memory, FLOPs, cost-model time, convolutions and collectives."""
  cost = compiled_step.cost_analysis()
  flops_per_chip = float(cost['flops'])
  seconds = step_seconds_estimate(cost.get('optimal_seconds'), flops_per_chip, spec)
  text = compiled_step.as_text()
  return {
      'compile_s': compile_s,
      'memory_per_chip': memory_per_chip(compiled_step, spec),
      'flops': flops_per_chip * spec.chips, 'flops_per_chip': flops_per_chip,
      'cost_model': {
          'note': ESTIMATE,
          'optimal_seconds': cost.get('optimal_seconds'),
          'step_seconds_estimate': seconds,
          'images_per_sec_estimate': batch_size / seconds if seconds else None},
      'convolution_operand_dtypes': lowered_convolution_dtypes(lowered_step.as_text()),
      'compiled_convolution_operand_dtypes': convolution_dtypes(text),
      'max_pool_ops': max_pool_ops(text),
      'collectives': collectives(text),
      'collective_group_sizes': collective_group_sizes(text),
  }


def step_seconds_estimate(optimal_seconds: float | None, flops_per_chip: float,
                          spec: TpuSlice) -> float | None:
  """XLA's cost-model step time, or None where it cannot be right.

  XLA's figure is sometimes negative (at large batches), and never valid when it
  is faster than the FLOPs at the chip's peak.
  """
  if optimal_seconds is None or optimal_seconds <= 0:
    return None
  if flops_per_chip / optimal_seconds > spec.peak_flops:
    return None
  return float(optimal_seconds)


_DEFINITION = re.compile(r'^\s*(?:ROOT )?%([\w.-]+) = (\w+)\[', re.MULTILINE)
_CONVOLUTION = re.compile(r'= \w+\[.*? convolution\(%([\w.-]+), %([\w.-]+)\).*?'
                          r'op_name="([^"]*)"')


_LOWERED_CONVOLUTION = re.compile(
    r'stablehlo\.convolution\(.*: \(tensor<[\dx]*x(\w+)>, tensor<[\dx]*x(\w+)>\)')


def lowered_convolution_dtypes(stablehlo_text: str) -> dict[str, int]:
  """{operand dtype: count} of the convolutions JAX hands to XLA (StableHLO text).

  These are the model's convolutions and their gradients, as the step asks for
  them; 'bf16/f32' for mixed operands.
  """
  counts = {}
  for lhs, rhs in _LOWERED_CONVOLUTION.findall(stablehlo_text):
    key = '/'.join(sorted({lhs, rhs}))
    counts[key] = counts.get(key, 0) + 1
  return counts


def convolution_dtypes(hlo_text: str) -> dict[str, dict[str, int]]:
  """Operand dtypes of a compiled HLO module's convolution instructions, counted.

  {'convolutions': the model's convolutions and their gradients (from
  lax.conv_general_dilated), 'dots': matmuls that XLA's TPU backend also
  emits as convolution instructions (the dense layer, the bilinear resize)},
  each {'bf16': n, ...}. 'bf16/f32' is a convolution into which XLA folded
  the conversion of its float32 kernel to bfloat16.
  """
  dtypes = dict(_DEFINITION.findall(hlo_text))
  counts = {'convolutions': {}, 'dots': {}}
  for lhs, rhs, op_name in _CONVOLUTION.findall(hlo_text):
    kind = 'convolutions' if 'conv_general_dilated' in op_name else 'dots'
    key = '/'.join(sorted({dtypes.get(lhs, '?'), dtypes.get(rhs, '?')}))
    counts[kind][key] = counts[kind].get(key, 0) + 1
  return counts


def max_pool_ops(hlo_text: str) -> dict[str, int]:
  """Counts of XLA's max-pool gradient and of the CPU form's own in compiled HLO."""
  return {'select-and-scatter': len(re.findall(r'\sselect-and-scatter\(', hlo_text)),
          'indexed_max_pool': len(re.findall(r'op_name="[^"]*indexed_max_pool', hlo_text))}


def collectives(hlo_text: str) -> dict[str, int]:
  """{collective: count} in a compiled HLO module's text; async pairs count once."""
  counts = {}
  for name in COLLECTIVES:
    count = len(re.findall(rf'\s{name}(?:-start)?\(', hlo_text))
    if count:
      counts[name] = count
  return counts


def collective_group_sizes(hlo_text: str) -> list[int]:
  """The distinct numbers of devices that the collectives of compiled HLO span.

  XLA writes the groups as lists (`{{0,1,2,3}}`), as an iota (`[1,4]<=[4]`), or,
  from JAX 0.12 on, as axes of a mesh (`mesh['i'=4] {'i'}`).
  """
  sizes = {len(group.split(',')) for group in
           re.findall(r'replica_groups=\{\{([\d,]+)\}', hlo_text)}
  sizes |= {int(size) for size in re.findall(r'replica_groups=\[\d+,(\d+)\]<=', hlo_text)}
  for axes, grouped in re.findall(r"replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}", hlo_text):
    axis_sizes = {name: int(size) for name, size in re.findall(r"'(\w+)'=(\d+)", axes)}
    sizes.add(math.prod(axis_sizes[name] for name in re.findall(r"'(\w+)'", grouped)))
  return sorted(sizes)


def compile_and_report(config: ml_collections.ConfigDict, workdir: str,
                       accelerator_type: str, find_largest_batch: bool = False) -> dict:
  """--mode=compile: compiles for the slice, prints the table, writes WORKDIR/compile.json."""
  validation.check_config(config)
  tpu_slice(accelerator_type)
  workdirs.create(workdir)
  report = compile_steps(config, accelerator_type)
  if find_largest_batch:
    report['largest_batch'] = largest_batch(config, accelerator_type, report)
  path = epath.Path(workdir) / 'compile.json'
  path.write_text(json.dumps(report, indent=2))
  print(format_table(report))
  logging.info('Wrote %s.', path)
  return report


def format_table(report: dict) -> str:
  """The report as a plain-text table."""
  info, train, evaluation = report['info'], report['train'], report['eval']
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
  for name, step in (('train', train), ('eval', evaluation)):
    memory, cost = step['memory_per_chip'], step['cost_model']
    images_per_sec = cost['images_per_sec_estimate']
    rows += [
        (f'{name}: compile (s)', f"{step['compile_s']:.1f}"),
        (f'{name}: HBM per chip', f"{_gib(memory['needed_bytes'])} of "
                                  f"{_gib(memory['hbm_bytes'])} (arguments "
                                  f"{_gib(memory['argument_bytes'])}, temporaries "
                                  f"{_gib(memory['temp_bytes'])})"),
        (f'{name}: GFLOP per step', f"{step['flops'] / 1e9:.1f} "
                                    f"({step['flops_per_chip'] / 1e9:.2f} per chip)"),
        (f'{name}: images/s (estimate)',
         'no estimate' if images_per_sec is None else
         f"{images_per_sec:,.0f} (XLA cost model, "
         f"{1000 * cost['step_seconds_estimate']:.2f} ms/step, not measured)"),
        (f'{name}: convolutions', ', '.join(
            f'{n} {dtype}' for dtype, n in step['convolution_operand_dtypes'].items())
         or 'none'),
        (f'{name}: collectives', ', '.join(
            f'{n} {op}' for op, n in step['collectives'].items()) or 'none'),
    ]
  if 'largest_batch' in report:
    largest = report['largest_batch']
    rows.append(('largest batch that fits',
                 f"{largest['batch_size']} ({largest['per_chip_batch_size']} per chip, "
                 f"{_gib(largest['needed_bytes'])} of HBM)"))
  return '\n'.join(f'{name:<28}{value}' for name, value in rows)


def train_step_memory(config: ml_collections.ConfigDict, accelerator_type: str,
                      per_chip_batch: int) -> dict:
  """The train step compiled at `per_chip_batch`: what a chip needs, whether it fits."""
  spec = tpu_slice(accelerator_type)
  devices = tpu_devices(accelerator_type)
  batch_size = per_chip_batch * spec.chips
  train_batch, _ = host_batches(config, devices, batch_size)
  state = abstract_state(config, devices[0].platform, len(devices))
  start = time.perf_counter()
  try:
    _, result, seconds = compiled(steps.pmap_train_step(config, devices), state,
                                  slice_batch(train_batch, spec.hosts), spec,
                                  accelerator_type,
                                  'train', batch_size)
  except OutOfMemory as e:
    return {'per_chip_batch_size': per_chip_batch, 'needed_bytes': e.needed_bytes,
            'fits': False, 'compile_s': time.perf_counter() - start}
  memory = memory_per_chip(result, spec)
  return {'per_chip_batch_size': per_chip_batch, 'needed_bytes': memory['needed_bytes'],
          'fits': memory['fits'], 'compile_s': seconds}


def largest_batch(config: ml_collections.ConfigDict, accelerator_type: str,
                  report: dict) -> dict:
  """The largest per-chip batch, a power of two, whose train step fits in HBM.

  A chip's memory grows about linearly with the batch until XLA starts to
  rematerialise activations to fit: the report's compile and one at 16 times
  its per-chip batch give the line, which predicts a power of two that fits.
  Compiling there confirms it (or halves it until one fits), and compiling
  twice as many shows whether a larger one fits too. Large compiles take
  minutes each.
  """
  spec = tpu_slice(accelerator_type)
  compiles = [{'per_chip_batch_size': report['info']['per_chip_batch_size'],
               'needed_bytes': report['train']['memory_per_chip']['needed_bytes'],
               'fits': report['train']['memory_per_chip']['fits'],
               'compile_s': report['train']['compile_s']}]

  def at(per_chip: int) -> dict:
    for done in compiles:
      if done['per_chip_batch_size'] == per_chip:
        return done
    compiles.append(train_step_memory(config, accelerator_type, per_chip))
    return compiles[-1]

  first, second = compiles[0], at(16 * compiles[0]['per_chip_batch_size'])
  if second['needed_bytes'] is None:  # Out of memory, and XLA did not say by how much.
    slope = fixed = None
    guess = second['per_chip_batch_size'] // 2
  else:
    slope = ((second['needed_bytes'] - first['needed_bytes'])
             / (second['per_chip_batch_size'] - first['per_chip_batch_size']))
    fixed = first['needed_bytes'] - slope * first['per_chip_batch_size']
    guess = 2 ** int(math.log2(max(1, (spec.hbm_bytes - fixed) / slope)))
  while not at(guess)['fits']:
    if guess == 1:
      raise UserError(f'The train step does not fit on {accelerator_type} even at one '
                      'image per chip.')
    guess //= 2
  while at(2 * guess)['fits']:
    guess *= 2
  return {'per_chip_batch_size': guess, 'batch_size': guess * spec.chips,
          'needed_bytes': at(guess)['needed_bytes'], 'hbm_bytes': spec.hbm_bytes,
          'linear_bytes_per_image': slope, 'linear_fixed_bytes': fixed,
          'compiles': compiles}
