"""--mode=compile for NVIDIA GPUs: the real steps compiled by JAX's CUDA plugin, on this CPU.

As for TPUs (tests/test_tpu_compile.py), each compile runs main.py as a user
would, at 16x16 and 2 images per GPU; the tests read its compile.json. They
need requirements-gpu-compile.txt; without it only the one-line error is tested.
"""

import os
import re
import subprocess
import sys

import jax
import pytest

from compile_runs import (compile_for, flops_per_image, num_conv_layers, num_params,
                          second_host_input, xla_flags)
from conftest import REPO, run_main
from googlenet_jax.tools import accelerators
from googlenet_jax.tools import largest_batch
from googlenet_jax.tools import topologies

needs_cuda_plugin = pytest.mark.skipif(
    topologies.gpu_compiler_version() != jax.__version__,
    reason=f'no GPU compiler of jax {jax.__version__} in {topologies.GPU_COMPILER_DIR}: '
           'see requirements-gpu-compile.txt')
H100 = accelerators.H100


@pytest.fixture(scope='module')
def one_host(config, tmp_path_factory):
  """h100-8 (8 GPUs, one host) in bfloat16."""
  return compile_for(config, tmp_path_factory, 'h100-8', dtype='bfloat16')


@pytest.fixture(scope='module')
def two_hosts(config, tmp_path_factory):
  """h100-16 (16 GPUs on two hosts) in float32, 2 images per GPU."""
  return compile_for(config, tmp_path_factory, 'h100-16', dtype='float32', batch_size=32)


def num_cudnn_calls(step) -> dict[str, int]:
  """{dtype: cuDNN calls} of a step, over every kind of call."""
  counts = {}
  for by_dtype in step['cudnn_calls'].values():
    for dtype, n in by_dtype.items():
      counts[dtype] = counts.get(dtype, 0) + n
  return counts


@pytest.mark.xdist_group('gpu_one_host')
@needs_cuda_plugin
def test_compile_for_one_gpu_host_writes_every_field(one_host):
  config, report, stdout = one_host
  info = report['info']
  assert (info['topology'], info['topology_name'], info['chips'], info['hosts']) == (
      'h100-8', '1x1x8', 8, 1)
  assert info['device'] == 'NVIDIA H100 80GB HBM3'
  assert (info['batch_size'], info['per_chip_batch_size']) == (16, 2)
  assert info['convolutions'] == 'lax.conv'
  assert info['gpu_spec'] == 'h100_sxm.txtpb'
  for name in ('train', 'eval'):
    step = report[name]
    memory = step['memory_per_chip']
    assert memory['hbm_bytes'] == H100.hbm_bytes
    assert memory['usable_bytes'] == int(0.75 * H100.hbm_bytes)
    assert memory['fits'] and 0 < memory['needed_bytes'] < memory['usable_bytes']
    # float32 parameters, unpadded on a GPU, and the GPU's share of the batch.
    param_bytes = 4 * num_params(config)
    assert param_bytes <= memory['argument_bytes'] <= param_bytes + 100_000
    # No cost model: the roofline of the compiled kernels' bytes, or of the FLOPs.
    cost = step['cost_model']
    roofline = max(step['flops_per_chip'] / H100.peak_flops,
                   step['kernel_bytes_per_chip'] / H100.hbm_bandwidth)
    assert cost['source'] == 'roofline' and step['kernel_bytes_per_chip'] > param_bytes
    assert cost['images_per_sec_estimate'] == pytest.approx(info['batch_size'] / roofline)
    assert step['cudnn_workspace_bytes'] == 0  # Nothing autotuned.
    assert step['flops'] == pytest.approx(8 * step['flops_per_chip'])
    assert step['collective_group_sizes'] == [8]
  # A train step is about 3 forward passes (forward, and the gradients of
  # inputs and weights) of the GPU's share of the batch, an eval step one:
  # here 2.98 and 0.82 of the bfloat16 forward pass, whose casts the cost
  # analysis counts too (in float32, 4.1 and 1.0 at 16x16).
  per_image = flops_per_image(config)
  assert 2.5 < report['train']['flops_per_chip'] / (2 * per_image) < 4.2
  assert 0.75 < report['eval']['flops_per_chip'] / (2 * per_image) < 1.4
  assert "JAX preallocates by default" in stdout
  for missing in ('no time from XLA', 'no autotuning', 'nothing run'):
    assert missing in stdout


@pytest.mark.xdist_group('gpu_one_host')
@needs_cuda_plugin
def test_bfloat16_convolutions_are_cudnn_calls_in_bf16(one_host):
  config, report, _ = one_host
  num_convs = num_conv_layers(config)
  # Forward, input and kernel gradients of every conv, but the first's input gradient.
  assert report['train']['convolution_operand_dtypes'] == {'bf16': 3 * num_convs - 1}
  assert num_cudnn_calls(report['train']) == {'bf16': 3 * num_convs - 1}
  assert num_cudnn_calls(report['eval']) == {'bf16': num_convs}
  assert set(report['train']['cudnn_calls']) >= {
      'convBiasActivationForward', 'convBackwardFilter'}


@pytest.mark.xdist_group('gpu_two_hosts')
@needs_cuda_plugin
def test_compile_for_two_gpu_hosts_takes_each_hosts_input(two_hosts):
  config, report, _ = two_hosts
  info = report['info']
  assert (info['topology_name'], info['chips'], info['hosts']) == ('1x2x8', 16, 2)
  assert num_cudnn_calls(report['train']) == {'f32': 3 * num_conv_layers(config) - 1}
  # Collectives span both hosts' GPUs.
  assert report['train']['collective_group_sizes'] == [16]
  # Each of the two hosts feeds its 8 GPUs what its input pipeline makes.
  assert report['input_shapes']['train'] == {
      'image': [[8, 2, 28, 28, 1], 'uint8'], 'label': [[8, 2], 'int32']}
  assert report['input_shapes']['train'] == second_host_input(32, num_local_devices=8)


@needs_cuda_plugin
def test_a_batch_beyond_what_jax_preallocates_is_one_line(config, tmp_path):
  # 16 images of 4096x4096 per GPU need 73.29 GiB (conftest's one-block
  # network): less than an H100's 79.11 GiB, more than the 75% of it that JAX
  # preallocates. The compile itself succeeds.
  result = run_main(tmp_path, config, '--mode=compile', '--topology=h100-8',
                    '--config.image_size=4096', '--config.batch_size=128',
                    '--config.dtype=float32', num_devices=1, xla_flags=xla_flags('h100-8'))
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith('Error:')]
  assert len(errors) == 1, result.stderr[-3000:]
  match = re.fullmatch(
      r'Error: The train step at batch 128 \(16 per chip\) does not fit on h100-8: a chip '
      r'would need ([\d.]+) GiB and a step may use 59\.33 GiB \(75% of its 79\.11 GiB, '
      r'what JAX preallocates\); use a smaller --config\.batch_size\.', errors[0])
  assert match, errors[0]
  assert 59.33 < float(match.group(1)) < 79.11
  assert not os.path.exists(tmp_path / 'compile.json')


def test_without_the_cuda_plugin_compile_is_one_line(tmp_path):
  empty = tmp_path / 'no_gpu_compiler'
  empty.mkdir()
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/fmnist96.py', '--mode=compile',
       '--topology=h100-8', f'--workdir={tmp_path / "w"}'],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, GOOGLENET_JAX_GPU_COMPILER=str(empty)))
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert result.stderr.splitlines()[-1] == (
      f"Error: Compiling for a GPU needs JAX's CUDA plugin and ptxas, which are not in "
      f'{empty}: pip install --no-deps --target {empty} -r requirements-gpu-compile.txt '
      '(about 570 MB; no GPU needed).')
  assert not os.path.exists(tmp_path / 'w')


def test_a_gpus_memory_is_its_specs():
  for accelerator in accelerators.of_platform('gpu'):
    with open(topologies.gpu_spec_path(accelerator.chip)) as f:
      assert f'device_memory_size: {accelerator.chip.hbm_bytes}\n' in f.read()


def test_docs_gpu_table_is_the_accelerator_table():
  with open(os.path.join(REPO, 'docs/gpu.md')) as f:
    assert accelerators.markdown_table('gpu') in f.read()


def test_largest_batch_on_a_gpu_is_the_largest_power_of_two_under_the_rule():
  # What GPU compiles say: memory linear in the batch, no compile fails.
  usable = 60 * 2**30
  def measure(per_chip: int) -> dict:
    needed = 2**30 + 3 * 2**20 * per_chip
    return {'per_chip_batch_size': per_chip, 'needed_bytes': needed,
            'fits': needed <= usable, 'compile_s': 1.0}
  result = largest_batch.search(measure(16), measure, usable, 'h100-8')
  # 1 GiB + 16384 x 3 MiB = 49 GiB fits, 32768 images (97 GiB) do not.
  assert result['per_chip_batch_size'] == 16384
  assert result['linear_bytes_per_image'] == pytest.approx(3 * 2**20)
  assert [c['per_chip_batch_size'] for c in result['compiles']] == [16, 256, 16384, 32768]
