"""What a compiled step shows, and the table --mode=compile prints.

Its memory per chip and whether that fits, its FLOPs, a step time (an
estimate, never a measurement: on TPUs XLA's cost model where its figure can be
right, else a roofline of XLA's FLOPs and bytes accessed against the chip's
peak and HBM bandwidth; on GPUs, where XLA has no cost model, the roofline of
the compiled kernels' bytes), its convolutions, cuDNN calls and collectives
(hlo_stats), and what the compile was for. On GPUs nothing is autotuned and
nothing runs; whether a step fits is a rule (`fit_rule`).
"""

import dataclasses
import time
from importlib import metadata
from typing import Callable

import jax

from googlenet_jax.experiment import Experiment
from googlenet_jax.models import conv_lowering
from googlenet_jax.tools import accelerators
from googlenet_jax.tools import hlo_stats
from googlenet_jax.tools.accelerators import Accelerator, GiB


ESTIMATE = 'an estimate from the compiled program, not a measurement'
# Where a step's time comes from (cost_model['source']).
XLA_COST_MODEL = 'xla_cost_model'  # cost_analysis()['optimal_seconds'].
ROOFLINE = 'roofline'  # max(FLOPs / peak, bytes accessed / HBM bandwidth), a lower bound.
NOT_DONE_ON_GPU = (
    "no time from XLA, which has no GPU cost model: the estimate is a roofline of "
    "the compiled kernels' bytes",
    'no autotuning: without a GPU, XLA takes default cuDNN algorithms and gives '
    'them no workspace',
    'nothing run: the figures are the compiler\'s',
)
GPU_FLOPS = ("XLA's CPU cost analysis of the unoptimised step (XLA's GPU compiler "
             'gives none)')
GPU_BYTES = ("the operands and results of the compiled program's kernels (fusions, "
             'cuDNN and cuBLAS calls, collectives), as XLA counts bytes accessed')


@dataclasses.dataclass(frozen=True)
class CompiledStep:
  """A train or eval step compiled for an accelerator, and what it was lowered from."""
  kind: str  # 'train' or 'eval'.
  batch_size: int
  host_batch: dict  # Host 0's share of the batch, as its input pipeline makes it.
  pmap_step: Callable  # The step pmapped over the devices it is given.
  args: tuple  # The replicated state and every host's batch, as ShapeDtypeStructs.
  lowered: jax.stages.Lowered
  compiled: jax.stages.Compiled
  seconds: float  # Lowering and compiling.
  memory: dict  # memory_per_chip's.


def fit_rule(chip: accelerators.Chip) -> str:
  """How a GPU step is judged to fit: a rule, since a GPU compile never fails for memory."""
  return (f"its arguments, outputs and temporaries take at most "
          f"{chip.usable_fraction:.0%} of the GPU's memory, what JAX preallocates "
          "by default (XLA_PYTHON_CLIENT_MEM_FRACTION); cuDNN's workspaces are "
          'not counted (nothing autotuned)')


def needed_bytes(memory) -> int:
  """Bytes a step needs on one device, from its compiled `memory_analysis()`."""
  # Outputs aliased to (donated) arguments take no memory of their own.
  return (memory.argument_size_in_bytes + memory.output_size_in_bytes
          - memory.alias_size_in_bytes + memory.temp_size_in_bytes
          + memory.generated_code_size_in_bytes)


def memory_per_chip(compiled_step, chip: accelerators.Chip) -> dict:
  """What a compiled step needs of one chip's memory: buffers, temporaries and code."""
  memory = compiled_step.memory_analysis()
  needed = needed_bytes(memory)
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


def does_not_fit(accelerator: Accelerator, kind: str, batch_size: int,
                 needed: int | None) -> str:
  """The one line for a step that does not fit in a chip's memory."""
  chip = accelerator.chip
  start = (f'The {kind} step at batch {batch_size} ({batch_size // accelerator.chips} '
           f'per chip) does not fit on {accelerator.name}: a chip would need ')
  end = '; use a smaller --config.batch_size.'
  if accelerator.platform == 'gpu':
    return (start + f'{gib(needed)} and a step may use {gib(chip.usable_bytes)} '
            f'({chip.usable_fraction:.0%} of its {gib(chip.hbm_bytes)}, what JAX '
            'preallocates)' + end)
  return (start + (f'{gib(needed)} of HBM for temporaries alone' if needed else 'more HBM')
          + f' and has {gib(chip.hbm_bytes)}' + end)


def gib(num_bytes: float) -> str:
  return f'{num_bytes / GiB:.2f} GiB'


def describe(experiment: Experiment, accelerator: Accelerator,
             devices: list[jax.Device]) -> dict:
  """What was compiled, for what, when; key names as the benchmark's JSON."""
  record = experiment.record
  info = {
      'date_utc': time.strftime('%Y-%m-%d %H:%M', time.gmtime()),
      'topology': accelerator.name, 'topology_name': accelerator.topology,
      'device': devices[0].device_kind,
      'num_devices': len(devices), 'chips': len(devices), 'hosts': accelerator.hosts,
      'hbm_bytes_per_chip': accelerator.chip.hbm_bytes,
      'peak_flops_per_chip': accelerator.chip.peak_flops,
      'jax': jax.__version__, 'model': record['model'], 'dtype': record['dtype'],
      'convolutions': ('matmuls' if conv_lowering.uses_matmuls(
          record['conv_lowering'], devices[0].platform) else 'lax.conv'),
      'batch_size': experiment.batch_size,
      'per_chip_batch_size': experiment.batch_size // len(devices),
      'eval_batch_size': experiment.eval_batch_size, 'image_size': record['image_size'],
  }
  if accelerator.platform == 'tpu':
    info.update(chip_config=accelerator.chip.chip_config,
                libtpu=metadata.version('libtpu'))
  else:
    info.update(jax_cuda12_plugin=metadata.version('jax-cuda12-plugin'),
                gpu_spec=accelerator.chip.spec_file,
                not_done=list(NOT_DONE_ON_GPU))
  return info


def analyse(accelerator: Accelerator, step: CompiledStep) -> dict:
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
  if accelerator.platform == 'tpu':
    report.update(tpu_analysis(accelerator, step))
  else:
    report.update(gpu_analysis(accelerator, step))
  return report


def tpu_analysis(accelerator: Accelerator, step: CompiledStep) -> dict:
  """XLA's TPU cost analysis of a compiled step, and its convolutions' operand dtypes."""
  cost = step.compiled.cost_analysis()
  text = step.compiled.as_text()
  flops_per_chip = float(cost['flops'])
  timing = step_time(cost, accelerator.chip)
  seconds = timing['step_seconds_estimate']
  return {
      'flops': flops_per_chip * accelerator.chips, 'flops_per_chip': flops_per_chip,
      'cost_model': {
          'note': ESTIMATE, **timing,
          'images_per_sec_estimate': step.batch_size / seconds if seconds else None,
          # Its totals; per-operand entries ('bytes accessed0{}', ...) left out.
          'xla_cost_analysis': {k: float(v) for k, v in sorted(cost.items()) if '{' not in k}},
      # What the GPU's roofline counts, beside XLA's own count of the same.
      'kernel_bytes_per_chip': hlo_stats.kernel_bytes(text),
      'compiled_convolution_operand_dtypes': hlo_stats.convolution_dtypes(text),
  }


def gpu_analysis(accelerator: Accelerator, step: CompiledStep) -> dict:
  """A compiled GPU step's FLOPs, cuDNN calls, and the roofline of its kernels' bytes.

  XLA's GPU compiler has no cost model to ask, so the step's time is always
  the roofline, as on TPUs where XLA's time cannot be right.
  """
  flops_per_chip = unoptimised_flops_per_chip(step)
  text = step.compiled.as_text()
  bytes_per_chip = hlo_stats.kernel_bytes(text)
  cost = {'note': ESTIMATE, 'source': ROOFLINE, 'optimal_seconds': None,
          'xla_refused': 'none (it has no GPU cost model)'}
  if bytes_per_chip is None:  # A loop in the step: no count, no time.
    cost.update(step_seconds_estimate=None, images_per_sec_estimate=None)
  else:
    seconds, bound = roofline_seconds(flops_per_chip, bytes_per_chip, accelerator.chip)
    cost.update(roofline_seconds=seconds, roofline_bound=bound, step_seconds_estimate=seconds,
                images_per_sec_estimate=step.batch_size / seconds)
  return {
      'flops': flops_per_chip * accelerator.chips, 'flops_per_chip': flops_per_chip,
      'flops_source': GPU_FLOPS,
      'kernel_bytes_per_chip': bytes_per_chip, 'kernel_bytes_source': GPU_BYTES,
      'cost_model': cost,
      'cudnn_calls': hlo_stats.cudnn_calls(text),
      'cudnn_workspace_bytes': hlo_stats.cudnn_workspace_bytes(text),
  }


def unoptimised_flops_per_chip(step: CompiledStep) -> float:
  """One chip's FLOPs of the step, by XLA's CPU cost analysis before optimisation.

  The same step pmapped over one CPU device, with one chip's share of the
  state and batch, is the per-chip program that JAX hands XLA for the GPUs.
  """
  one_chip = lambda tree: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((1,) + x.shape[1:], x.dtype), tree)
  lowered = step.pmap_step(jax.devices('cpu')[:1]).lower(
      *(one_chip(arg) for arg in step.args))
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


def roofline_seconds(flops_per_chip: float, bytes_per_chip: float,
                     chip: accelerators.Chip) -> tuple[float, str]:
  """The least time a chip can take: (seconds, 'compute' or 'memory', whichever binds).

  Its FLOPs at the chip's bf16 peak, or its bytes to and from HBM at the HBM
  bandwidth, whichever takes longer: a lower bound on the step's time (no
  overlap lost, no op below the peak), so its images/s are an upper bound.
  """
  compute, memory = flops_per_chip / chip.peak_flops, bytes_per_chip / chip.hbm_bandwidth
  return (compute, 'compute') if compute >= memory else (memory, 'memory')


def step_time(cost: dict, chip: accelerators.Chip) -> dict:
  """A TPU step's estimated time from XLA's `cost_analysis()`, and where it comes from.

  XLA's cost model (`optimal_seconds`) where it can be right
  (`step_seconds_estimate`), else the roofline of XLA's FLOPs and bytes
  accessed, which is given beside XLA's either way.
  """
  optimal = cost.get('optimal_seconds')
  optimal = None if optimal is None else float(optimal)
  flops = float(cost['flops'])
  roofline, bound = roofline_seconds(flops, float(cost.get('bytes accessed', 0)), chip)
  xla = step_seconds_estimate(optimal, flops, chip)
  timing = {'optimal_seconds': optimal, 'roofline_seconds': roofline,
            'roofline_bound': bound}
  if xla is not None:
    return {**timing, 'source': XLA_COST_MODEL, 'step_seconds_estimate': xla}
  return {**timing, 'source': ROOFLINE, 'step_seconds_estimate': roofline,
          'xla_refused': ('no time' if optimal is None else
                          f'{optimal:.4g} s, not positive' if optimal <= 0 else
                          f'{optimal:.4g} s, faster than its FLOPs at the peak')}


def estimate(cost: dict) -> str:
  """The estimated images/s as the table gives it, with where they come from."""
  if cost['images_per_sec_estimate'] is None:
    return 'no estimate'
  images, ms = cost['images_per_sec_estimate'], 1000 * cost['step_seconds_estimate']
  if cost['source'] == XLA_COST_MODEL:
    return f'{images:,.0f} (XLA cost model, {ms:.2f} ms/step, not measured)'
  bound = ('its bytes accessed at the HBM bandwidth' if cost['roofline_bound'] == 'memory'
           else 'its FLOPs at the bf16 peak')
  return (f'at most {images:,.0f} (a roofline, not measured: {ms:.2f} ms/step, {bound}; '
          f"XLA's cost model gave {cost['xla_refused']})")


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
                 f"{gib(largest['needed_bytes'])} of HBM)"))
  if 'fit_rule' in report['train']['memory_per_chip']:
    rows.append(('a step fits if', report['train']['memory_per_chip']['fit_rule']))
  if 'not_done' in info:
    rows.append(('not done', '; '.join(info['not_done'])))
  return '\n'.join(f'{name:<28}{value}' for name, value in rows)


def step_rows(name: str, step: dict) -> list[tuple[str, str]]:
  """The table's rows for one compiled step."""
  memory, cost = step['memory_per_chip'], step['cost_model']
  of = (f"{gib(memory['usable_bytes'])} usable "
        f"({memory['usable_bytes'] / memory['hbm_bytes']:.0%} of {gib(memory['hbm_bytes'])})"
        if 'usable_bytes' in memory else gib(memory['hbm_bytes']))
  rows = [
      (f'{name}: compile (s)', f"{step['compile_s']:.1f}"),
      (f'{name}: HBM per chip', f"{gib(memory['needed_bytes'])} of {of} (arguments "
                                f"{gib(memory['argument_bytes'])}, temporaries "
                                f"{gib(memory['temp_bytes'])})"),
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
