"""What a restore costs in memory: the whole train state (a resume) against the weights
that eval and predict read, from the same momentum checkpoint.

  python -m benchmarks.restore_memory --config=configs/fmnist96.py \
      --config.momentum=0.9 --workdir=/tmp/restore_memory

Saves the config's initial train state as a checkpoint (once), then restores it
both ways, each in a fresh process, taking turns `--repeats` times. Prints each
way's bytes read and the process's peak resident memory during the restore
(Linux: the peak is reset just before it, by /proc/self/clear_refs), against
its resident memory before.
"""

import os
import re
import subprocess
import sys

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from googlenet_jax import experiment
from googlenet_jax.runtime import checkpoint
from googlenet_jax.runtime import config_fields

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/fmnist96.py', 'Config file.',
                                lock_config=False)
flags.DEFINE_string('workdir', '/tmp/restore_memory', 'Where the checkpoint is kept.')
flags.DEFINE_integer('repeats', 3, 'Restores of each kind, taking turns.')
flags.DEFINE_enum('only', None, ['state', 'weights'], 'Internal: restore one way, print.')

WAYS = ('state', 'weights')


def resident_mib(field: str) -> float:
  """/proc/self/status's `field`: VmRSS (now) or VmHWM (the peak), in MiB."""
  with open('/proc/self/status') as f:
    return int(re.search(rf'^{field}:\s+(\d+) kB', f.read(), re.M)[1]) / 1024


def reset_peak() -> None:
  """Makes VmHWM start again from VmRSS (Linux 4.0 and newer)."""
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')


def save_initial_state(config, directory: str) -> None:
  """The config's initial train state as step 0 in `directory`, unless it is there."""
  manager = checkpoint.create_manager(directory)
  if manager.latest_step() is None:
    state = experiment.build(config, load_data=False).initial_state()
    checkpoint.save(manager, jax.device_get(state), config_fields.record(config))


def restore_once(config, directory: str, way: str) -> None:
  """Restores step 0 `way`; prints the bytes read and the peak memory it added."""
  target = experiment.build(config, load_data=False).abstract_state()
  if way == 'weights':
    target = checkpoint.weights(target)
  before = resident_mib('VmRSS')
  reset_peak()
  _, restored = checkpoint.restore(directory, [0], target, config_fields.record(config),
                                   resume=way == 'state')
  read = sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(restored))
  print(f'{way}: {read / 2**20:.1f} MiB read, peak {resident_mib("VmHWM"):.0f} MiB '
        f'during the restore, {before:.0f} MiB before it')


def main(argv):
  del argv
  config = FLAGS.config
  directory = os.path.abspath(os.path.join(FLAGS.workdir, 'checkpoints'))
  if FLAGS.only:
    restore_once(config, directory, FLAGS.only)
    return
  save_initial_state(config, directory)
  overrides = [arg for arg in sys.argv[1:] if not arg.startswith('--only')]
  for _ in range(FLAGS.repeats):
    for way in WAYS:
      child = subprocess.run(
          [sys.executable, '-m', 'benchmarks.restore_memory', *overrides, f'--only={way}'],
          capture_output=True, text=True, check=True)
      print(child.stdout.strip())


if __name__ == '__main__':
  app.run(main)
