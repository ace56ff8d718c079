"""main.py --mode=compile run as a user runs it, and the counts its report is checked against."""

import json

import jax
import numpy as np

from conftest import run_main
from googlenet_jax import experiment
from googlenet_jax import input_pipeline
from googlenet_jax.tools import accelerators
from googlenet_jax.tools import compile_mode
from googlenet_jax.tools import summary


# A GPU compile here checks the program XLA makes (memory, cuDNN calls,
# collectives), which LLVM's and ptxas's optimisations of the kernels' code do
# not change; without them it takes 2.5 times less (78 -> 31 s at 16x16).
GPU_KERNELS_UNOPTIMISED = ('--xla_backend_optimization_level=0 '
                           '--xla_llvm_disable_expensive_passes=true '
                           '--xla_gpu_disable_gpuasm_optimizations=true')


def compile_for(config, tmp_path_factory, topology, tpu_vm_env=None, **fields):
  """main.py --mode=compile for `topology` at 16x16 with `fields` set; its compile.json.

  16x16 images (every max-pool and convolution still there) prove the same as
  the chapter's 96x96 at a fraction of the compile time. With `tpu_vm_env`
  (cloud_tpu_vm.TpuVmHost.environ) main.py runs as on a Cloud TPU VM.
  """
  config = config.copy_and_resolve_references()
  # 'auto', the configs' default, must pick the accelerator's form on this CPU.
  config.update(conv_lowering='auto', image_size=16, **fields)
  workdir = tmp_path_factory.mktemp(topology)
  result = run_main(workdir, config, '--mode=compile', f'--topology={topology}',
                    num_devices=1, tpu_vm_env=tpu_vm_env, xla_flags=xla_flags(topology))
  assert result.returncode == 0, result.stderr[-3000:]
  with open(workdir / 'compile.json') as f:
    return config, json.load(f), result.stdout


def xla_flags(topology: str) -> str:
  """The XLA_FLAGS of a test's compile for `topology`."""
  return (GPU_KERNELS_UNOPTIMISED if accelerators.get(topology).platform == 'gpu'
          else '')


def variables(config):
  """The shapes of the model's variables in the accelerators' form (XLA's convolutions)."""
  model = experiment.create_model(config, conv_form='xla')
  return summary.abstract_variables(model, config.image_size)


def num_params(config) -> int:
  return summary.count_params(variables(config)['params'])


def num_conv_layers(config) -> int:
  return sum(x.ndim == 4 for x in jax.tree.leaves(variables(config)['params']))


def flops_per_image(config) -> float:
  """The forward pass's FLOPs on one image, by XLA's CPU cost analysis of each block."""
  model = experiment.create_model(config, conv_form='xla')
  return sum(s.flops for s in summary.block_stats(model, config.image_size))


def second_host_input(global_batch_size: int, num_local_devices: int) -> dict:
  """`compile_mode.shapes` of the train batch that host 1 of 2 makes for its devices."""
  source = input_pipeline.ArraySource(np.zeros((global_batch_size, 28, 28, 1), np.uint8),
                                      np.zeros(global_batch_size, np.int32))
  return compile_mode.shapes(next(input_pipeline.train_batches(
      source, global_batch_size=global_batch_size, seed=0, epoch=0, process_index=1,
      process_count=2, num_local_devices=num_local_devices)))
