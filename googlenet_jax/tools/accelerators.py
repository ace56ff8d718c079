"""The accelerators --mode=compile compiles for, as data: Cloud TPU slices and NVIDIA GPU hosts.

Each is named as people rent it: gcloud's accelerator types for TPUs, model and
GPU count for GPUs (h100-8 is one host of 8 H100s). `markdown_table` draws the
tables of docs/tpu.md and docs/gpu.md from this one (the tests check that they
agree).
"""

import dataclasses
import math

from googlenet_jax.errors import UserError

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One generation of TPU chip or model of GPU, as its compiler sees it."""
  name: str
  platform: str  # That of JAX's devices: 'tpu' or 'gpu'.
  hbm_bytes: int  # TPUs: what XLA's TPU compiler allots (libtpu 0.0.42.1); GPUs: the spec's.
  peak_flops: float  # bfloat16 dense matmul peak, vendor's figure.
  hbm_bandwidth: float  # Bytes/s between HBM and the chip, vendor's figure.
  # The share of hbm_bytes a step may take: XLA's TPU compiler refuses a step
  # that does not fit, while JAX takes 75% of a GPU's memory at start-up for its
  # allocator (XLA_PYTHON_CLIENT_MEM_FRACTION) and a GPU compile never fails.
  usable_fraction: float = 1.0
  chip_config: str = 'default'  # TPUs: 'megacore' where a chip's two TensorCores are one device.
  spec_file: str = ''  # GPUs: XLA's GpuTargetConfigProto text, in googlenet_jax/tools/gpu_specs/.

  @property
  def usable_bytes(self) -> int:
    return int(self.usable_fraction * self.hbm_bytes)


# HBM bandwidths as Google publishes them: 1200, 819, 2765 and 1640 GBps (v5e's
# on cloud.google.com/tpu/docs/v5e, seen 2026-12-07). Only the roofline
# estimate (compile_report) uses them.
TPU_V4 = Chip('TPU v4', 'tpu', int(30.75 * GiB), 275e12, 1200e9, chip_config='megacore')
TPU_V5E = Chip('TPU v5e', 'tpu', int(15.75 * GiB), 197e12, 819e9)
TPU_V5P = Chip('TPU v5p', 'tpu', int(95.74 * GiB), 459e12, 2765e9, chip_config='megacore')
TPU_V6E = Chip('TPU v6e', 'tpu', int(31.25 * GiB), 918e12, 1640e9)
# Memory as XLA's specs give it (device_memory_size); NVIDIA's dense bf16 peak
# and memory bandwidth (3.35 and 4.8 TB/s).
H100 = Chip('H100 SXM 80GB', 'gpu', 84_942_979_072, 989e12, 3.35e12, usable_fraction=0.75,
            spec_file='h100_sxm.txtpb')
H200 = Chip('H200 141GB', 'gpu', 151_397_597_184, 989e12, 4.8e12, usable_fraction=0.75,
            spec_file='h200.txtpb')


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """A machine as rented: a TPU slice, or hosts of GPUs, and JAX's topology for it."""
  name: str  # As --topology takes it.
  chip: Chip
  chips: int
  chips_per_host: int
  # JAX's topology name: a TPU slice's generation and chip grid; for GPUs,
  # slices x hosts x GPUs per host.
  topology: str
  host_bounds: tuple[int, int, int] | None = None  # TPUs: the chip grid of one host (VM).

  @property
  def hosts(self) -> int:
    return self.chips // self.chips_per_host

  @property
  def platform(self) -> str:
    return self.chip.platform


def tpu_slice(name: str, topology: str, chip: Chip, chips: int,
              host_bounds: tuple[int, int, int]) -> Accelerator:
  """A Cloud TPU slice of `chips` chips, `host_bounds` of them a host."""
  return Accelerator(name, chip, chips, math.prod(host_bounds), topology, host_bounds)


def gpu_hosts(name: str, chip: Chip, hosts: int, gpus_per_host: int = 8) -> Accelerator:
  """`hosts` machines of `gpus_per_host` GPUs each, one slice."""
  return Accelerator(name, chip, hosts * gpus_per_host, gpus_per_host,
                     f'1x{hosts}x{gpus_per_host}')


# TPUs: gcloud's --accelerator-type names. Those of v4 and v5p count TensorCores,
# two per chip (v4-8 is 4 chips); those of v5e (v5litepod) and v6e count chips.
# Topologies and chip configs as MaxText's accelerator_to_spec_map.py; hosts as
# Cloud TPU VMs have them: the -8 slices of v5e and v6e are one 8-chip host,
# larger ones 4 chips a host, as v4 and v5p. GPUs: 8 to a host, as cloud GPU
# machines (a3-highgpu-8g, p5.48xlarge) and DGX/HGX boards have them.
ACCELERATORS = {a.name: a for a in (
    tpu_slice('v4-8', 'v4:2x2x1', TPU_V4, 4, (2, 2, 1)),
    tpu_slice('v4-16', 'v4:2x2x2', TPU_V4, 8, (2, 2, 1)),
    tpu_slice('v5litepod-8', 'v5e:2x4', TPU_V5E, 8, (2, 4, 1)),
    tpu_slice('v5litepod-16', 'v5e:4x4', TPU_V5E, 16, (2, 2, 1)),
    tpu_slice('v5p-8', 'v5p:2x2x1', TPU_V5P, 4, (2, 2, 1)),
    tpu_slice('v6e-8', 'v6e:2x4', TPU_V6E, 8, (2, 4, 1)),
    gpu_hosts('h100-8', H100, hosts=1),
    gpu_hosts('h200-8', H200, hosts=1),
    gpu_hosts('h100-16', H100, hosts=2),
)}


def of_platform(platform: str) -> list[Accelerator]:
  """The accelerators of `platform` ('tpu' or 'gpu'), in the table's order."""
  return [a for a in ACCELERATORS.values() if a.platform == platform]


def get(name: str | None) -> Accelerator:
  """The accelerator `name`; UserError listing the known names if unknown."""
  tpus, gpus = (', '.join(a.name for a in of_platform(p)) for p in ('tpu', 'gpu'))
  known = f'{tpus} (Cloud TPU accelerator types) or {gpus} (NVIDIA GPUs: model-count)'
  if not name:
    raise UserError(f'--mode=compile needs --topology, one of {known}.')
  if name not in ACCELERATORS:
    raise UserError(f'Unknown --topology {name!r}: choose one of {known}.')
  return ACCELERATORS[name]


def _gib(num_bytes: float) -> str:
  return f'{num_bytes / GiB:.2f}'.rstrip('0').rstrip('.') + ' GiB'


@dataclasses.dataclass(frozen=True)
class CloudTpu:
  """How Cloud TPU rents one generation: its documentation's facts, read 2026-12-03."""
  chip: Chip
  version: str  # gcloud's --version for JAX (cloud.google.com/tpu/docs/runtimes).
  # North America's, and Europe's for v6e (cloud.google.com/tpu/docs/regions-zones).
  zones: tuple[str, ...]
  hbm: str  # Per chip, as the generation's page gives it.
  page: str  # The generation's page.

  def slices(self) -> list[Accelerator]:
    """This generation's slices in ACCELERATORS: those --mode=compile compiles for."""
    return [a for a in ACCELERATORS.values() if a.chip == self.chip]


CLOUD_TPUS = (
    CloudTpu(TPU_V4, 'tpu-ubuntu2204-base', ('us-central2-b',), '32 GiB',
             'https://cloud.google.com/tpu/docs/v4'),
    CloudTpu(TPU_V5E, 'v2-alpha-tpuv5-lite',
             ('us-central1-a', 'us-south1-a', 'us-west1-c', 'us-west4-a'), '16 GB',
             'https://cloud.google.com/tpu/docs/v5e'),
    CloudTpu(TPU_V5P, 'v2-alpha-tpuv5', ('us-central1-a', 'us-east5-a'), '95 GB',
             'https://cloud.google.com/tpu/docs/v5p'),
    CloudTpu(TPU_V6E, 'v2-alpha-tpuv6e',
             ('us-central1-b', 'us-east1-d', 'us-east5-a', 'us-east5-b', 'europe-west4-a'),
             '32 GB', 'https://cloud.google.com/tpu/docs/v6e'),
)


def cloud_tpu_table() -> str:
  """A row per TPU generation: what creating its VMs needs, and its slices here."""
  rows = ['| generation | `--version` | zones | HBM per chip | slices here: VMs x chips |',
          '|---|---|---|---|---|']
  for tpu in CLOUD_TPUS:
    slices = ', '.join(f'{a.name}: {a.hosts} x {a.chips_per_host}' for a in tpu.slices())
    rows.append(f'| [{tpu.chip.name}]({tpu.page}) | `{tpu.version}` | '
                f'{", ".join(tpu.zones)} | {tpu.hbm} | {slices} |')
  return '\n'.join(rows)


def markdown_table(platform: str) -> str:
  """The accelerators of `platform` as the docs' Markdown table."""
  rows = ['| `--topology` | chip | JAX topology | chips | hosts | memory per chip (XLA) '
          '| of it a step may use | bf16 peak per chip | HBM bandwidth per chip |',
          '|---|---|---|---|---|---|---|---|---|']
  for a in of_platform(platform):
    topology = a.topology + (', megacore' if a.chip.chip_config == 'megacore' else '')
    rows.append(f'| {a.name} | {a.chip.name} | {topology} | {a.chips} | {a.hosts} | '
                f'{_gib(a.chip.hbm_bytes)} | {_gib(a.chip.usable_bytes)} | '
                f'{a.chip.peak_flops / 1e12:.0f} TFLOP/s | '
                f'{a.chip.hbm_bandwidth / 1e9:,.0f} GB/s |')
  return '\n'.join(rows)

