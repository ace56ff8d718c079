"""What training starts from: the model, the optimizer and the initial train state."""

from typing import Any, Callable

from flax import struct
import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
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


def create_model(name: str, num_classes: int, conv_form: str, dtype: str,
                 platform: str | None = None) -> nn.Module:
  """The model `name` of `models.MODELS`, computing in `dtype`.

  BatchNorm averages its batch statistics over the pmapped steps' device axis.
  Its convolutions and max-pools take `conv_form` (see conv_lowering), resolved
  for `platform`, that of the devices its steps are compiled for (default:
  JAX's default backend); parameters are float32 in every form and dtype, so
  checkpoints do not depend on either.
  """
  form = conv_lowering.resolve(conv_form, platform)
  return models.create(name, num_classes=num_classes, conv=conv_lowering.conv_module(form),
                       max_pool=conv_lowering.max_pool(form), dtype=jnp.dtype(dtype),
                       axis_name=sharding.AXIS)


def create_optimizer(learning_rate: optax.ScalarOrSchedule, momentum: float = 0.0,
                     nesterov: bool = False,
                     weight_decay: float = 0.0) -> optax.GradientTransformation:
  """SGD with optional (Nesterov) momentum, and weight decay on the kernels."""
  sgd = optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov)
  if not weight_decay:
    return sgd
  # Decay conv and dense kernels, not biases or BatchNorm's scale and offset.
  kernels = lambda params: jax.tree.map(lambda x: x.ndim > 1, params)
  return optax.chain(optax.add_decayed_weights(weight_decay, mask=kernels), sgd)


def one_image(image_shape: tuple[int, int, int]) -> jax.ShapeDtypeStruct:
  """The shape of one float32 (H, W, C) image: what the models' init takes."""
  return jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)


def jit_run_once(fn: Callable, **jit_kwargs) -> Callable:
  """`fn` jitted (with `jit_kwargs`) as a program that runs once, as initialisers do.

  On a CPU it is compiled unoptimised: XLA's CPU backend takes seconds to
  optimise the initialisers' random draws (docs/tests.md), and such a program
  then runs in well under a second. The tests' one-off programs take it too.
  """
  unoptimised = {'xla_backend_optimization_level': 0}
  return jax.jit(fn, compiler_options=unoptimised if jax.default_backend() == 'cpu' else None,
                 **jit_kwargs)


def init_variables(model: nn.Module, image_shape: tuple[int, int, int], rng: jax.Array):
  """`model`'s initial variables for (N, *image_shape) images."""
  # Only the images' shape: the compiled program holds the initialisers alone,
  # not the forward pass, so every image size, dtype and form of a model shares
  # it (and the compilation cache's copy of it).
  images = one_image(image_shape)
  return jit_run_once(lambda rng: model.lazy_init(rng, images))(rng)


def create_train_state(rng: jax.Array, model: nn.Module, tx: optax.GradientTransformation,
                       image_shape: tuple[int, int, int]) -> TrainState:
  """Initial parameters, BatchNorm statistics and optimizer state, on the default device."""
  return state_of(init_variables(model, image_shape, rng), model, tx)


def abstract_train_state(model: nn.Module, tx: optax.GradientTransformation | None,
                         image_shape: tuple[int, int, int]) -> TrainState:
  """`create_train_state`'s shapes and dtypes on the default device: a restore target.

  Nothing is compiled or computed, so a resumed or evaluated run does not pay
  for the initialisers. Without `tx`, the state has no optimizer state.
  """
  state = jax.eval_shape(lambda rng, images: state_of(model.init(rng, images), model, tx),
                         jax.random.key(0), one_image(image_shape))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), state)


def state_of(variables, model: nn.Module,
             tx: optax.GradientTransformation | None) -> TrainState:
  """The train state of `model`'s `variables`, with a fresh optimizer state (if `tx`)."""
  params, batch_stats = variables['params'], variables.get('batch_stats', {})
  if tx is None:
    return TrainState(step=0, apply_fn=model.apply, params=params, tx=None,
                      opt_state=None, batch_stats=batch_stats)
  return TrainState.create(apply_fn=model.apply, params=params, batch_stats=batch_stats,
                           tx=tx)


def for_inference(state: TrainState) -> TrainState:
  """`state` without its optimizer: what eval and predict read, whatever wrote it.

  The eval step then has one signature, so training's evaluation and `--mode=eval`
  share its compiled program.
  """
  return state.replace(tx=None, opt_state=None)
