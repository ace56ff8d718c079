"""Trains, evaluates or summarises a model; this file only parses flags.

  python main.py --config=configs/fmnist96.py --workdir=workdir/fmnist96
  python main.py --workdir=workdir/fmnist96 --mode=eval

Every config field can be overridden, e.g. `--config.learning_rate=0.1`. Eval and
predict take the network from the checkpoint, so they need no --config.
"""

import sys

# Before any import that needs a newer Python: one line, not a syntax or import error.
# Keep this file parseable by old Pythons (3.8 and up).
if sys.version_info < (3, 11):
  sys.exit('Error: googlenet_jax needs Python 3.11 or newer (this is %d.%d.%d): make a '
           'virtual environment with one, e.g. python3 -m pip install --user uv && '
           'python3 -m uv venv --python 3.12 .venv (see the README), install '
           'requirements.txt into it and run .venv/bin/python main.py.'
           % tuple(sys.version_info[:3]))

# pylint: disable=g-import-not-at-top,wrong-import-position
import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from googlenet_jax import evaluate
from googlenet_jax import experiment
from googlenet_jax import predict
from googlenet_jax import train
from googlenet_jax import validation
from googlenet_jax.errors import UserError, describe_os_error
from googlenet_jax.runtime import checkpoint_integrity
from googlenet_jax.runtime import compilation_cache
from googlenet_jax.runtime import distributed
from googlenet_jax.runtime import tpu_vm
from googlenet_jax.tools import compare
from googlenet_jax.tools import compile_mode
from googlenet_jax.tools import summary
from googlenet_jax.tools import topologies

FLAGS = flags.FLAGS
# Eval and predict read the network from the checkpoint; the chapter's recipe
# gives them the rest (where the data is, the eval batch size).
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs',
                              'fmnist96.py')
config_flags.DEFINE_config_file(
    'config', DEFAULT_CONFIG, 'Config file (configs/*.py); needed to train. Eval and '
    'predict take the network from the checkpoint.', lock_config=True)
flags.DEFINE_string('workdir', 'workdir', 'Directory for checkpoints and metrics.')
flags.DEFINE_string('checkpoint', None,
                    'For --mode=eval and predict: a checkpoints directory, one step\'s '
                    'directory in it, or a workdir, local or gs://, instead of '
                    "--workdir's; the outputs go to --workdir, which must be given.")
flags.DEFINE_enum('mode', 'train',
                  ['train', 'eval', 'predict', 'summary', 'compare', 'compile'],
                  'train (resumes from WORKDIR), eval the latest checkpoint, '
                  'predict: draw its predictions on test images, or print the '
                  'per-block summary, or compare parameters and FLOPs of the '
                  "chapter's networks, or compile the train and eval steps for "
                  'the TPU slice or GPUs --topology on this host (neither needed).')
flags.DEFINE_string('topology', None,
                    'For --mode=compile: a Cloud TPU accelerator type, e.g. v5litepod-8, '
                    'or NVIDIA GPUs as model-count, e.g. h100-8.')
flags.DEFINE_bool('largest_batch', False,
                  'For --mode=compile: also find the largest per-chip batch (a power '
                  'of two) whose train step fits in HBM, by compiling (minutes).')
flags.DEFINE_bool('distributed', False,
                  'Join several processes with jax.distributed, found by JAX '
                  '(SLURM, Open MPI). Cloud TPU VMs of a pod slice join without '
                  'it; elsewhere give the three flags below.')
flags.DEFINE_string('coordinator_address', '',
                    'host:port of process 0, for runs of several processes. On '
                    'Cloud TPU VMs alone (JAX finds the rest), to use another '
                    'port than JAX\'s 8482, e.g. WORKER_0_IP:8476.')
flags.DEFINE_integer('num_processes', None, 'Number of processes in the run.')
flags.DEFINE_integer('process_id', None, 'This process, 0 .. num_processes - 1.')


def config_overrides() -> set[str]:
  """The config fields set on the command line (--config.NAME=VALUE)."""
  return set(config_flags.get_override_values(FLAGS['config']))


def checkpoint_inference(config) -> experiment.Inference:
  """The checkpoint that --mode=eval and predict read: --checkpoint's, else --workdir's."""
  return experiment.build_inference(config, FLAGS.workdir, FLAGS.checkpoint,
                                    config_overrides())


MODES = {
    'train': lambda config, workdir: train.train_and_evaluate(
        experiment.build(config), workdir),
    'eval': lambda config, workdir: evaluate.evaluate_checkpoint(
        checkpoint_inference(config), workdir),
    'predict': lambda config, workdir: predict.predict_checkpoint(
        checkpoint_inference(config), workdir),
    'summary': lambda config, workdir: print(summary.summary_table(
        experiment.create_model(config), config.model, experiment.image_shape(config))),
    'compare': lambda config, workdir: print(compare.comparison_table(
        experiment.with_dataset_classes(config).num_classes)),
    'compile': lambda config, workdir: compile_mode.compile_and_report(
        config, workdir, FLAGS.topology, FLAGS.largest_batch),
}


def exit_with_error(message: str) -> None:
  print(f'Error: {message}', file=sys.stderr)
  sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every config problem as one line, not a traceback."""
  try:
    args = FLAGS(argv)
    FLAGS.config.keys()  # A config file that failed to load raises only when used.
    return args
  except flags.Error as e:  # A bad flag value, e.g. --config.batch_size=many.
    exit_with_error(str(e))
  except (AttributeError, KeyError) as e:
    field = str(e).strip('\'"')
    exit_with_error(f'Unknown config field {field}: see the fields in the config file.')
  except OSError as e:
    exit_with_error(f'Cannot load the --config file ({str(e).splitlines()[-1].strip()}): '
                    'give an existing one, e.g. --config=configs/fmnist96.py.')


def check_flags() -> None:
  """Exits with one line for flags that do not go together."""
  reads_a_checkpoint = FLAGS.mode in ('eval', 'predict')
  if not (reads_a_checkpoint or FLAGS['config'].present):
    exit_with_error(f'--mode={FLAGS.mode} needs --config, e.g. '
                    '--config=configs/fmnist96.py.')
  if FLAGS.checkpoint and not reads_a_checkpoint:
    exit_with_error(f'--checkpoint is for --mode=eval and predict, not {FLAGS.mode}.')
  if FLAGS.checkpoint and not FLAGS['workdir'].present:
    exit_with_error('--checkpoint needs --workdir, where eval.json and the pictures '
                    'go, e.g. --workdir=/tmp/eval.')


def start_jax(mode: str) -> None:
  """Readies JAX for `mode` before any backend starts: its devices, the run's processes."""
  if mode == 'compile':  # Alone, on this host's CPU; uncached: it times compiles.
    topologies.prepare_host(FLAGS.topology)
    return
  compilation_cache.enable(FLAGS.config.compilation_cache_dir)
  if not tpu_vm.run_beside_the_chips_holder(mode):
    distributed.initialize(FLAGS.distributed, FLAGS.coordinator_address,
                           FLAGS.num_processes, FLAGS.process_id)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  check_flags()
  checkpoint_integrity.quiet_orbax()
  try:
    config = FLAGS.config
    validation.check_config(config)
    start_jax(FLAGS.mode)
    logging.info('JAX process %d of %d, local devices: %s', jax.process_index(),
                 jax.process_count(), jax.local_devices())
    MODES[FLAGS.mode](config, FLAGS.workdir)
  except UserError as e:
    exit_with_error(str(e))
  except OSError as e:  # A full disk, a read-only file system: eval.json, a picture.
    exit_with_error(f'{describe_os_error(e)}. The checkpoints are unchanged.')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
