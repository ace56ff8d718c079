"""--mode=compile: the real steps compiled for Cloud TPU slices by libtpu, on this CPU.

Each compile runs main.py as a user would, for a real topology; the tests read
the compile.json it writes. 16x16 images (every max-pool and convolution still
there) and batches of 16, 2 images per chip, prove the same as the chapter's
96x96 at a fraction of the compile time.
"""

import os
import platform
import subprocess
import sys

import numpy as np
import pytest

import cloud_tpu_vm
import jpeg_data
from compile_runs import (compile_for, flops_per_image, num_conv_layers, num_params,
                          second_host_input)
from conftest import REPO, run_main
from gcs_server import free_port
from googlenet_jax import data
from googlenet_jax import experiment
from googlenet_jax.data import tfds_images
from googlenet_jax.errors import UserError
from googlenet_jax.models import conv_lowering
from googlenet_jax.tools import accelerators
from googlenet_jax.tools import compile_mode
from googlenet_jax.tools import compile_report
from googlenet_jax.tools import largest_batch

# requirements.txt installs libtpu where it has wheels; elsewhere nothing compiles for a TPU.
needs_libtpu = pytest.mark.skipif(
    sys.platform != 'linux' or platform.machine() != 'x86_64',
    reason='libtpu has wheels for x86_64 Linux only')

# GoogLeNet's max-pools: after b1 and b2, one in each of the nine Inception
# blocks' fourth path, and after the third and fourth groups of blocks.
NUM_MAX_POOLS = 13


@pytest.fixture(scope='module')
def single_host(config, tmp_path_factory):
  """v5litepod-8 (8 chips, one host) in bfloat16, the chapter's network, compiled on a
  TPU VM (simulated).

  Returns compile_for's config, report and stdout, and the paths the VM's
  metadata server was asked.
  """
  vm, = cloud_tpu_vm.slice_of_hosts(1, tmp_path_factory.mktemp('vm'))
  try:
    compiled = compile_for(config, tmp_path_factory, 'v5litepod-8',
                           tpu_vm_env=vm.environ(free_port()), dtype='bfloat16',
                           model='googlenet')
  finally:
    vm.stop()
  return (*compiled, vm.metadata.requests)


@pytest.fixture(scope='module')
def pod(config, tmp_path_factory):
  """v4-16 (8 chips on two hosts) in float32, the chapter's network."""
  return compile_for(config, tmp_path_factory, 'v4-16', dtype='float32', model='googlenet')


def check_report(config, report, topology, chips, hosts, device):
  info = report['info']
  assert (info['topology'], info['chips'], info['hosts'], info['device']) == (
      topology, chips, hosts, device)
  assert (info['batch_size'], info['per_chip_batch_size']) == (16, 16 // chips)
  assert info['dtype'] == config.dtype and info['convolutions'] == 'lax.conv'
  for name in ('train', 'eval'):
    step = report[name]
    assert step['compile_s'] > 0
    memory = step['memory_per_chip']
    assert memory['hbm_bytes'] == accelerators.ACCELERATORS[topology].chip.hbm_bytes
    assert memory['fits'] and 0 < memory['needed_bytes'] < memory['hbm_bytes']
    # The replicated parameters are float32 in every dtype: 4 bytes each, padded
    # to the TPU's tiles, and the chip's share of the batch.
    param_bytes = 4 * num_params(config)
    assert param_bytes <= memory['argument_bytes'] <= 1.2 * param_bytes + 10_000
    assert step['flops'] == pytest.approx(chips * step['flops_per_chip'])
    assert step['cost_model']['note'] == compile_report.ESTIMATE
    assert set(step['cost_model']) >= {'step_seconds_estimate', 'images_per_sec_estimate'}
    # The kernels' bytes, which the GPU's roofline counts, against XLA's count
    # of the same program: 0.67-0.74 of it for these tiny steps (v4, v5e), and
    # 0.93-0.98 for a 28x28 conv block of 24-260 channels at batch 128.
    xla_bytes = step['cost_model']['xla_cost_analysis']['bytes accessed']
    assert 0.6 < step['kernel_bytes_per_chip'] / xla_bytes < 1.1
    assert step['collectives'].get('all-reduce', 0) >= 1
    # Collectives span every chip of the slice, not one host's.
    assert step['collective_group_sizes'] == [chips]
  # A train step is about 3 forward passes (forward, and the gradients of
  # inputs and weights) of the chip's share of the batch, an eval step one.
  # XLA's TPU cost analysis counts some padding that the CPU's does not: at
  # 16x16, 2.75 (v5e, bf16) to 3.9 (v4, f32) passes; twice the share is 5.5+.
  per_image = flops_per_image(config)
  per_chip = 16 // chips
  assert 2.5 < report['train']['flops_per_chip'] / (per_chip * per_image) < 4.2
  assert 0.75 < report['eval']['flops_per_chip'] / (per_chip * per_image) < 1.4


@pytest.mark.xdist_group('tpu_single_host')
@needs_libtpu
def test_compile_for_a_single_host_slice_writes_every_field(single_host):
  config, report, stdout, metadata_requests = single_host
  check_report(config, report, 'v5litepod-8', chips=8, hosts=1, device='TPU v5 lite')
  assert 'images/s (estimate)' in stdout and 'not measured' in stdout
  # On a TPU VM, as on a laptop: the compile joins no host, so asks nothing.
  assert metadata_requests == []


@pytest.mark.xdist_group('tpu_single_host')
@needs_libtpu
def test_bfloat16_convolutions_are_bf16_and_xlas_own_on_a_tpu(single_host):
  config, report, _, _ = single_host
  train, evaluation = report['train'], report['eval']
  # Forward, input and kernel gradients of every conv, but the first's input gradient.
  num_convs = num_conv_layers(config)
  assert train['convolution_operand_dtypes'] == {'bf16': 3 * num_convs - 1}
  assert evaluation['convolution_operand_dtypes'] == {'bf16': num_convs}
  # No im2col (the CPU form's convolutions are matmuls: none would be left) and
  # XLA's own max-pool gradient, not the CPU form's indexed one.
  assert train['max_pool_ops'] == {'select-and-scatter': NUM_MAX_POOLS,
                                   'indexed_max_pool': 0}


@pytest.mark.xdist_group('tpu_pod')
@needs_libtpu
def test_compile_for_a_pod_slice_takes_each_hosts_input(pod):
  config, report, _ = pod
  check_report(config, report, 'v4-16', chips=8, hosts=2, device='TPU v4')
  assert report['train']['convolution_operand_dtypes'] == {
      'f32': 3 * num_conv_layers(config) - 1}
  # Each of the two hosts feeds its 4 chips what its input pipeline makes.
  assert report['input_shapes']['train'] == {
      'image': [[4, 2, 28, 28, 1], 'uint8'], 'label': [[4, 2], 'int32']}
  assert report['input_shapes']['train'] == second_host_input(16, num_local_devices=4)


def test_an_unknown_topology_is_one_line(config, tmp_path):
  result = run_main(tmp_path, config, '--mode=compile', '--topology=v5e-8',
                    num_devices=1)
  assert result.returncode == 1
  assert result.stderr.splitlines()[-1] == (
      "Error: Unknown --topology 'v5e-8': choose one of v4-8, v4-16, v5litepod-8, "
      'v5litepod-16, v5p-8, v6e-8 (Cloud TPU accelerator types) or h100-8, h200-8, '
      'h100-16 (NVIDIA GPUs: model-count).')
  assert 'Traceback' not in result.stderr


# main.py as `python main.py` runs it, in a Python that cannot import libtpu.
WITHOUT_LIBTPU = """
import runpy, sys
sys.modules['libtpu'] = None  # import libtpu raises ImportError.
sys.argv = ['main.py', '--config=configs/fmnist96.py', '--mode=compile',
            '--topology=v5litepod-8', '--workdir=' + sys.argv[1]]
runpy.run_path('main.py', run_name='__main__')
"""


def test_without_libtpu_compile_is_one_line(tmp_path):
  result = subprocess.run([sys.executable, '-c', WITHOUT_LIBTPU, str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert result.stderr.splitlines()[-1] == (
      'Error: Compiling for a TPU needs libtpu, which is not installed: pip install -r '
      'requirements.txt (libtpu==0.0.42.1).')


@needs_libtpu
def test_a_batch_beyond_hbm_is_one_line(config, tmp_path):
  # 8 images of 4096x4096 per chip: the first convolution's output alone is
  # 8 x 2048 x 2048 x 64 floats, 8 GiB, and its gradients as much again, more
  # than a v5e chip's 15.75 GiB of HBM.
  result = run_main(tmp_path, config, '--mode=compile', '--topology=v5litepod-8',
                    '--config.image_size=4096', '--config.batch_size=64',
                    num_devices=1)
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith('Error:')]
  assert len(errors) == 1, result.stderr[-3000:]
  assert errors[0].startswith(
      'Error: The train step at batch 64 (8 per chip) does not fit on '
      'v5litepod-8: a chip would need ')
  assert errors[0].endswith(' of HBM for temporaries alone and has 15.75 GiB; use a '
                            'smaller --config.batch_size.')
  assert not os.path.exists(tmp_path / 'compile.json')


def test_auto_form_follows_the_platform_compiled_for(config):
  auto = config.copy_and_resolve_references()
  auto.conv_lowering = 'auto'
  on_tpu = experiment.create_model(auto, platform='tpu')
  on_cpu = experiment.create_model(auto, platform='cpu')
  assert on_tpu == experiment.create_model(auto, conv_form='xla')
  assert on_cpu == experiment.create_model(auto, conv_form='matmul')
  assert on_tpu.max_pool is conv_lowering.max_pool('xla')
  assert on_cpu.max_pool is conv_lowering.indexed_max_pool


def test_the_cost_models_time_counts_only_where_it_can_be_right():
  v5e = accelerators.ACCELERATORS['v5litepod-8'].chip
  flops = 23.5e9  # fmnist96's train step on one v5e chip at batch 128.
  assert compile_report.step_seconds_estimate(1.71e-3, flops, v5e) == 1.71e-3
  # XLA's figure at a per-chip batch of 1024 (bf16, v5e), as issue 19 found it.
  assert compile_report.step_seconds_estimate(-64.0, 32 * flops, v5e) is None
  assert compile_report.step_seconds_estimate(None, flops, v5e) is None
  # Faster than the chip's peak allows.
  assert compile_report.step_seconds_estimate(0.9 * flops / v5e.peak_flops, flops, v5e) is None


def test_a_time_xla_gets_wrong_gives_way_to_a_roofline_that_says_so():
  v5e = accelerators.ACCELERATORS['v5litepod-8'].chip
  # XLA's cost analysis of imagenet_googlenet's train step on one v5e chip,
  # 128 images at 224x224 in bfloat16 (2026-12-07): a negative time.
  train = {'flops': 1.1603e12, 'bytes accessed': 2.5143e10, 'optimal_seconds': -113.96}
  timing = compile_report.step_time(train, v5e)
  # The bytes at 819 GB/s (30.7 ms) take longer than the FLOPs at 197 TFLOP/s (5.9 ms).
  assert (timing['source'], timing['roofline_bound']) == ('roofline', 'memory')
  assert timing['step_seconds_estimate'] == pytest.approx(2.5143e10 / 819e9)
  line = compile_report.estimate({**timing, 'note': compile_report.ESTIMATE,
                                  'images_per_sec_estimate': 1024 / 30.7e-3})
  assert line.startswith('at most 33,355 (a roofline, not measured: 30.70 ms/step, ')
  assert line.endswith("XLA's cost model gave -114 s, not positive)")
  # The eval step's time from XLA stands, and is no faster than the roofline.
  evaluation = {'flops': 3.952e11, 'bytes accessed': 3.416e9, 'optimal_seconds': 5.28e-3}
  timing = compile_report.step_time(evaluation, v5e)
  assert (timing['source'], timing['step_seconds_estimate']) == ('xla_cost_model', 5.28e-3)
  assert timing['roofline_seconds'] < 5.28e-3
  # Without bytes, or with few, the FLOPs bind; no time from XLA at all is said.
  timing = compile_report.step_time({'flops': 1.97e12}, v5e)
  assert (timing['step_seconds_estimate'], timing['roofline_bound']) == (
      pytest.approx(10e-3), 'compute')
  assert timing['xla_refused'] == 'no time'


def test_the_compiled_input_of_a_streamed_dataset_is_what_its_source_reads():
  class DataSource:  # Two JPEGs of other sizes, as a prepared TFDS split gives them.
    def __getitems__(self, indices):
      return [{'image': jpeg_data.jpeg(np.full((40 + 8 * i, 50, 3), 99, np.uint8)),
               'label': 3} for i in indices]
  spec = data.spec('imagenet2012')
  streamed = tfds_images.read_batch(DataSource(), 32, True, 0, 0, np.arange(2))
  stand_in = next(compile_mode.StandIn(2, spec.example_shape(32), spec.masked).read(
      [np.arange(2)], train=True, seed=0, epoch=0))
  as_read = lambda batch: {k: (v.shape, v.dtype) for k, v in batch.items()}
  assert as_read(stand_in) == as_read(streamed) == {
      'image': ((2, 32, 32, 3), np.uint8), 'label': ((2,), np.int32), 'mask': ((2,), bool)}
  # Fashion-MNIST's in-memory source has no mask, and its own 28x28x1 images.
  fmnist = data.spec('fashion_mnist')
  assert as_read(next(compile_mode.StandIn(2, fmnist.example_shape(96), fmnist.masked).read(
      [np.arange(2)], train=True, seed=0, epoch=0))) == {
          'image': ((2, 28, 28, 1), np.uint8), 'label': ((2,), np.int32)}


def test_docs_tpu_table_is_the_accelerator_table():
  with open(os.path.join(REPO, 'docs/tpu.md')) as f:
    assert accelerators.markdown_table('tpu') in f.read()


def test_docs_tpu_vm_table_is_the_cloud_tpu_table():
  with open(os.path.join(REPO, 'docs/pods.md')) as f:
    assert accelerators.cloud_tpu_table() in f.read()
  # Every generation compiled for has its row, and every row a slice.
  assert ({tpu.chip for tpu in accelerators.CLOUD_TPUS} ==
          {a.chip for a in accelerators.of_platform('tpu')})


def test_largest_batch_halves_a_guess_that_does_not_fit_and_stops_at_one():
  # Compiles that run out of HBM beyond 100 images per chip without saying how far.
  def measure(per_chip: int) -> dict:
    fits = per_chip <= 100
    return {'per_chip_batch_size': per_chip, 'needed_bytes': per_chip if fits else None,
            'fits': fits, 'compile_s': 1.0}
  result = largest_batch.search(measure(16), measure, 2**30, 'v5litepod-8')
  assert result['per_chip_batch_size'] == 64
  assert result['linear_bytes_per_image'] is None
  assert [c['per_chip_batch_size'] for c in result['compiles']] == [16, 256, 128, 64]
  never = lambda per_chip: {'per_chip_batch_size': per_chip, 'needed_bytes': None,
                            'fits': False, 'compile_s': 1.0}
  with pytest.raises(UserError, match='does not fit on v5litepod-8 even at one image'):
    largest_batch.search(never(16), never, 2**30, 'v5litepod-8')
