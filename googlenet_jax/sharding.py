"""The devices and their layout: one axis of local devices, named AXIS, as pmap has it.

The steps' collectives (`steps.py`) and BatchNorm's batch statistics (the models'
`axis_name`, set by `train_state.create_model`) name the same axis; the input
pipeline lays out batches, and `replicate` the state, the way the pmapped steps
take and return them.
"""

from typing import Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

from googlenet_jax.errors import UserError

AXIS = 'batch'  # The name of the device axis of the pmapped steps.


def device_sharding(devices: Sequence[jax.Device] | None = None) -> NamedSharding:
  """pmap's layout: the leading axis split over the local devices (or `devices`)."""
  return NamedSharding(Mesh(devices or jax.local_devices(), (AXIS,)), PartitionSpec(AXIS))


def replicate(tree, devices: Sequence[jax.Device] | None = None):
  """Copies `tree` to every local device (or `devices`), laid out as pmap's outputs.

  `flax.jax_utils.replicate` names its mesh axis differently, which makes the
  second step compile the train step a second time.
  """
  devices = devices or jax.local_devices()
  layout = device_sharding(devices)
  def put(x):
    x = np.asarray(x)
    return jax.device_put(np.broadcast_to(x, (len(devices),) + x.shape), layout)
  return jax.tree.map(put, jax.device_get(tree))


def unreplicate(tree):
  """The first device's copy of a replicated `tree`, on the host.

  Reads that device's shard of each array; `x[0]` would compile and run a
  gather per leaf, seconds for GoogLeNet's 250 leaves.
  """
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[0], tree)


def check_batch_size(batch_size: int, num_devices: int,
                     field: str = 'batch_size') -> None:
  """Raises UserError unless `batch_size` splits evenly over the devices.

  Args:
    batch_size: the global batch size.
    num_devices: the devices over all processes.
    field: the config field the user should change.
  """
  if batch_size <= 0:
    raise UserError(f'{field} {batch_size} must be positive')
  if batch_size % num_devices:
    suggestion = -(-batch_size // num_devices) * num_devices
    raise UserError(
        f'{field} {batch_size} is not divisible by the {num_devices} devices: '
        f'use a multiple of {num_devices} (e.g. --config.{field}={suggestion})')
