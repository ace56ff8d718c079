"""What training starts from: the model, the optimizer and the initial train state."""

import functools
from typing import Any, Callable

from flax import struct
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import optax

from googlenet_jax import models
from googlenet_jax import sharding
from googlenet_jax.models import conv_lowering

class TrainState(train_state.TrainState):
  """Parameters, optimizer state and BatchNorm's running averages.

  `batch_stats` is {} for models without BatchNorm. It is not trained by the
  optimizer: train_step replaces it with what the model returns.
  """
  batch_stats: Any = struct.field(default_factory=dict)


def create_model(config: ml_collections.ConfigDict, conv_form: str | None = None,
                 platform: str | None = None):
  """The model named by `config.model`, computing in `config.dtype`.

  BatchNorm averages its batch statistics over the pmapped steps' device axis.
  Its convolutions and max-pools take `conv_form` (default `config.conv_lowering`),
  resolved for `platform`, that of the devices its steps are compiled for
  (default: JAX's default backend); parameters are float32 in every form and
  dtype, so checkpoints do not depend on either.
  """
  form = conv_lowering.resolve(conv_form or config.conv_lowering, platform)
  return _create_model(config.model, config.num_classes, form, jnp.dtype(config.dtype))


# One object per setting, for runs in one process (a resume, the tests): a train
# state holds `model.apply`, which equals another only for the same model object,
# and equal states share one traced train step. Keyed on exactly what it reads,
# the form resolved, so one process holds a CPU and a TPU model apart.
@functools.lru_cache(maxsize=None)
def _create_model(name: str, num_classes: int, form: str, dtype: jnp.dtype):
  return models.MODELS[name](num_classes=num_classes, conv=conv_lowering.conv_module(form),
                             max_pool=conv_lowering.max_pool(form), dtype=dtype,
                             axis_name=sharding.AXIS)


def total_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """num_train_steps if set, else num_epochs of steps."""
  if config.num_train_steps > 0:
    return config.num_train_steps
  return config.num_epochs * steps_per_epoch


def learning_rate_steps(config: ml_collections.ConfigDict,
                        steps_per_epoch: int) -> tuple[float, int, int] | float:
  """config.learning_rate, or (peak, warmup steps, decay steps) of the cosine schedule."""
  if config.schedule == 'constant':
    return config.learning_rate
  warmup_steps = int(config.warmup_epochs * steps_per_epoch)
  # A run shorter than its warmup (a quick num_train_steps check) only warms up.
  decay_steps = max(total_train_steps(config, steps_per_epoch), warmup_steps + 1)
  return config.learning_rate, warmup_steps, decay_steps


def create_learning_rate_fn(config: ml_collections.ConfigDict,
                            steps_per_epoch: int) -> optax.ScalarOrSchedule:
  """config.learning_rate, constant or after linear warmup with cosine decay to 0."""
  return _learning_rate_fn(learning_rate_steps(config, steps_per_epoch))


def _learning_rate_fn(rate: tuple[float, int, int] | float) -> optax.ScalarOrSchedule:
  if not isinstance(rate, tuple):
    # A float, not a schedule: the optimizer state then holds no step count,
    # as in checkpoints of the chapter's recipe.
    return rate
  peak, warmup_steps, decay_steps = rate
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup_steps, decay_steps=decay_steps)


def learning_rate_at(config: ml_collections.ConfigDict, steps_per_epoch: int,
                     step: int) -> float:
  """The learning rate that the optimizer uses for the update at `step` (from 0)."""
  rate = create_learning_rate_fn(config, steps_per_epoch)
  return float(rate(step)) if callable(rate) else rate


def create_optimizer(config: ml_collections.ConfigDict,
                     steps_per_epoch: int = 1) -> optax.GradientTransformation:
  """SGD with optional (Nesterov) momentum and weight decay on the kernels.

  `steps_per_epoch` only shapes the learning-rate schedule; the optimizer state's
  structure, which a checkpoint must match, does not depend on it. The same
  settings give the same object: train states are then equal in structure, and
  runs in one process (a resume, the tests) reuse their traced train step.
  """
  return _create_optimizer(learning_rate_steps(config, steps_per_epoch),
                           config.momentum, config.nesterov, config.weight_decay)


# Keyed on exactly what the optimizer reads: its learning rate as a function of
# the step, momentum, nesterov and weight decay.
@functools.lru_cache(maxsize=None)
def _create_optimizer(rate: tuple[float, int, int] | float, momentum: float,
                      nesterov: bool, weight_decay: float) -> optax.GradientTransformation:
  sgd = optax.sgd(_learning_rate_fn(rate), momentum=momentum or None, nesterov=nesterov)
  if not weight_decay:
    return sgd
  # Decay conv and dense kernels, not biases or BatchNorm's scale and offset.
  kernels = lambda params: jax.tree.map(lambda x: x.ndim > 1, params)
  return optax.chain(optax.add_decayed_weights(weight_decay, mask=kernels), sgd)


def one_image(image_size: int) -> jax.ShapeDtypeStruct:
  """The shape of one float32 image_size x image_size x 1 image: what the models' init takes."""
  return jax.ShapeDtypeStruct((1, image_size, image_size, 1), jnp.float32)


def init_variables(model, image_size: int, rng: jax.Array):
  """`model`'s initial variables for (N, image_size, image_size, 1) images."""
  return _initializer(model, image_size)(rng)


def jit_run_once(fn: Callable, **jit_kwargs) -> Callable:
  """`fn` jitted (with `jit_kwargs`) as a program that runs once, as initialisers do.

  On a CPU it is compiled unoptimised: XLA's CPU backend takes about 1.3 s to
  optimise each threefry draw (GoogLeNet's initialisers: 11.5 -> 4.8 s), and
  such a program then runs in well under a second. The tests' one-off programs
  take it too.
  """
  unoptimised = {'xla_backend_optimization_level': 0}
  return jax.jit(fn, compiler_options=unoptimised if jax.default_backend() == 'cpu' else None,
                 **jit_kwargs)


@functools.lru_cache(maxsize=None)  # Traced once per model and size in a process.
def _initializer(model, image_size: int) -> Callable:
  # Only the images' shape: the compiled program holds the initialisers alone,
  # not the forward pass, so every image size, dtype and form of a model shares
  # it (and the compilation cache's copy of it).
  images = one_image(image_size)
  return jit_run_once(lambda rng: model.lazy_init(rng, images))


def create_train_state(rng: jax.Array, config: ml_collections.ConfigDict,
                       model, steps_per_epoch: int = 1) -> TrainState:
  """Initial parameters, BatchNorm statistics and optimizer state, on the default device."""
  return state_of(init_variables(model, config.image_size, rng), config, model,
                  steps_per_epoch)


def abstract_train_state(config: ml_collections.ConfigDict, model,
                         steps_per_epoch: int = 1) -> TrainState:
  """`create_train_state`'s shapes and dtypes on the default device: a restore target.

  Nothing is compiled or computed, so a resumed or evaluated run does not pay
  for the initialisers.
  """
  state = jax.eval_shape(
      lambda rng, images: state_of(model.init(rng, images), config, model,
                                   steps_per_epoch), jax.random.key(0),
      one_image(config.image_size))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), state)


def state_of(variables, config: ml_collections.ConfigDict, model,
             steps_per_epoch: int) -> TrainState:
  """The train state of `model`'s `variables`, with a fresh optimizer state."""
  return TrainState.create(
      apply_fn=model.apply, params=variables['params'],
      batch_stats=variables.get('batch_stats', {}),
      tx=create_optimizer(config, steps_per_epoch))


def for_inference(state: TrainState) -> TrainState:
  """`state` without its optimizer: what eval and predict read, whatever wrote it.

  The eval step then has one signature, so training's evaluation and `--mode=eval`
  share its compiled program.
  """
  return state.replace(tx=None, opt_state=None)
