"""The chapter's exercises: model variants, minimum sizes, BatchNorm state,
label smoothing, the optimizer options and the compared classic networks."""

import functools
import os
import runpy

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from googlenet_jax import experiment
from googlenet_jax import models
from googlenet_jax import sharding
from googlenet_jax import steps
from googlenet_jax import train_state
from googlenet_jax import validation
from googlenet_jax.errors import UserError
from googlenet_jax.models import classic
from googlenet_jax.models.googlenet import ConvBlock, global_average_pool
from googlenet_jax.runtime import checkpoint
from googlenet_jax.tools import compare
from googlenet_jax.tools import summary
from conftest import normal

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def config():
  """The chapter's config at 32x32 with batches of 16: no data is read here."""
  config = runpy.run_path(os.path.join(REPO, 'configs/fmnist96.py'))['get_config']()
  config.update(image_size=32, batch_size=16, eval_batch_size=16, learning_rate=0.05)
  return config


# The chapter's nine Inception blocks: (input channels, c1, c2, c3, c4).
CHAPTER_BLOCKS = [
    (192, 64, (96, 128), (16, 32), 32), (256, 128, (128, 192), (32, 96), 64),
    (480, 192, (96, 208), (16, 48), 64), (512, 160, (112, 224), (24, 64), 64),
    (512, 128, (128, 256), (24, 64), 64), (512, 112, (144, 288), (32, 64), 64),
    (528, 256, (160, 320), (32, 128), 128), (832, 256, (160, 320), (32, 128), 128),
    (832, 384, (192, 384), (48, 128), 128)]


def conv_params(kernel, channels_in, channels_out):
  """A k x k conv's kernel and bias."""
  return kernel * kernel * channels_in * channels_out + channels_out


def googlenet_convs(stem_kernel, blocks=CHAPTER_BLOCKS):
  """(kernel, channels in, channels out) of every conv of the chapter's GoogLeNet."""
  convs = [(stem_kernel, 1, 64), (1, 64, 64), (3, 64, 192)]
  for c_in, c1, (c2_reduce, c2), (c3_reduce, c3), c4 in blocks:
    convs += [(1, c_in, c1), (1, c_in, c2_reduce), (3, c2_reduce, c2),
              (1, c_in, c3_reduce), (5, c3_reduce, c3), (1, c_in, c4)]
  return convs


def expected_counts():
  """(trainable parameters, BatchNorm running averages) of each model, 10 classes.

  Derived from the architecture: convs and the 1024 x 10 head; BatchNorm adds a
  scale and an offset (trained) and a mean and a variance (running) per conv
  output channel; googlenet_1block keeps the stem and the first block;
  googlenet28's stem is 3x3 instead of 7x7; Inception-ResNet adds
  a 1x1 projection of each block's output, and a 1x1 shortcut where the block
  changes the channel count. Inception-v3's counts are read off this code, a
  regression pin only.
  """
  head = conv_params(1, 1024, 10)
  plain = sum(conv_params(*conv) for conv in googlenet_convs(7)) + head
  norm = 2 * sum(channels_out for _, _, channels_out in googlenet_convs(7))
  stem_3x3 = conv_params(3, 1, 64) - conv_params(7, 1, 64)
  residual = 0
  for c_in, c1, (_, c2), (_, c3), c4 in CHAPTER_BLOCKS:
    c_out = c1 + c2 + c3 + c4
    residual += conv_params(1, c_out, c_out) + (c_in != c_out) * conv_params(1, c_in, c_out)
  one_block = (sum(conv_params(*conv) for conv in googlenet_convs(7, CHAPTER_BLOCKS[:1]))
               + conv_params(1, 256, 10))  # The first block gives 256 channels.
  return {
      'googlenet': (plain, 0),
      'googlenet_1block': (one_block, 0),
      'googlenet_bn': (plain + norm, norm),
      'googlenet28': (plain + norm + stem_3x3, norm),
      'inception_resnet': (plain + norm + residual, norm),
      'inception_v3': (21_675_242, 34_432),
      'inception_v3_299': (21_675_242, 34_432),  # Its extra pool holds no parameters.
  }


PARAMS = expected_counts()
IMAGE_SIZE = {'googlenet28': 28, 'inception_v3': 96, 'inception_v3_299': 96}  # Else 32.


def shapes(model, image_size, train_mode=False):
  """Logits and variables of `model`, as shapes only."""
  images = jax.ShapeDtypeStruct((2, image_size, image_size, 1), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  logits = jax.eval_shape(
      functools.partial(model.apply, train=train_mode, mutable=['batch_stats']),
      variables, images)[0]
  return logits, variables


@pytest.mark.parametrize('name', sorted(models.MODELS))
def test_variant_gives_logits_and_its_parameter_count(name):
  model = models.MODELS[name].constructor(num_classes=10)
  logits, variables = shapes(model, IMAGE_SIZE.get(name, 32))
  chex.assert_shape(logits, (2, 10))
  counts = (summary.count_params(variables['params']),
            summary.count_params(variables.get('batch_stats', {})))
  assert counts == PARAMS[name]


def test_registry_names_every_model():
  assert set(models.MODELS) == set(PARAMS)
  # --mode=compare shows the classic networks and every model but the tests'.
  assert set(compare.compared_models()) == (
      {'alexnet', 'vgg11', 'nin'} | set(models.MODELS) - {'googlenet_1block'})


def test_the_derived_count_is_the_chapters():
  assert PARAMS['googlenet'] == (5_977_530, 0)


def test_googlenet28_keeps_a_grid_down_to_b5():
  model = models.MODELS['googlenet28'].constructor()
  images = jnp.zeros((1, 28, 28, 1))
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  _, state = jax.eval_shape(functools.partial(
      model.apply, capture_intermediates=True), variables, images)
  got = {k: state['intermediates'][k]['__call__'][0].shape for k in ('b1', 'b2', 'b4')}
  assert got == {'b1': (1, 14, 14, 64), 'b2': (1, 7, 7, 192), 'b4': (1, 2, 2, 832)}


def test_residual_block_is_the_input_plus_a_scaled_projection():
  block = models.ResidualInception(2, (2, 2), (2, 2), 2, scale=0.2)
  x = normal((1, 4, 4, 8), seed=1)
  variables = train_state.jit_run_once(block.init)(jax.random.key(0), x)
  zeroed = jax.tree_util.tree_map_with_path(
      lambda path, v: jnp.zeros_like(v) if path[0].key == 'ConvBlock_0' else v,
      variables['params'])
  # A zero projection leaves relu(x): the shortcut is the identity (8 -> 8).
  chex.assert_trees_all_close(block.apply({'params': zeroed}, x), nn.relu(x))


@pytest.mark.parametrize('name', sorted(models.MODELS))
def test_min_image_size_is_the_smallest_that_runs(name):
  model = models.MODELS[name].constructor()
  size = models.MODELS[name].min_image_size
  assert summary.every_layer_has_pixels(model, size)
  assert not summary.every_layer_has_pixels(model, size - 1)


def test_check_config_rejects_too_small_images_and_unknown_names(config):
  small = config.copy_and_resolve_references()
  small.model, small.image_size = 'inception_v3', 42
  with pytest.raises(UserError, match='smallest working image size is 43'):
    validation.check_config(small)
  small.image_size = 43
  validation.check_config(small)
  unknown = config.copy_and_resolve_references()
  unknown.model = 'lenet'
  with pytest.raises(UserError, match="Unknown config.model 'lenet'"):
    validation.check_config(unknown)
  unknown = config.copy_and_resolve_references()
  unknown.conv_lowering = 'winograd'
  with pytest.raises(UserError, match="Unknown config.conv_lowering 'winograd'"):
    validation.check_config(unknown)


def test_label_smoothing_loss_on_a_hand_computed_case():
  logits = jnp.log(jnp.array([[0.5, 0.25, 0.25]]))
  labels = jnp.array([0])
  # Smoothing 0.3 over 3 classes: targets (0.8, 0.1, 0.1), so the loss is
  # -(0.8 log 0.5 + 0.2 log 0.25) = 1.2 log 2; without smoothing, log 2.
  chex.assert_trees_all_close(
      steps.smoothed_cross_entropy_loss(logits, labels, 0.3), 1.2 * jnp.log(2.0)[None])
  chex.assert_trees_all_close(
      steps.smoothed_cross_entropy_loss(logits, labels, 0.0),
      steps.cross_entropy_loss(logits, labels))


def test_the_chapters_optimizer_state_is_unchanged(config):
  """Checkpoints of the constant-rate recipe keep restoring: no step count added."""
  params = {'kernel': jnp.zeros((3, 3)), 'bias': jnp.zeros(3)}
  chex.assert_trees_all_equal_structs(
      experiment.create_optimizer(config, 1).init(params), optax.sgd(0.05).init(params))


def test_cosine_schedule_warms_up_then_decays_and_decay_spares_biases(config):
  best = config.copy_and_resolve_references()
  best.update(schedule='cosine', warmup_epochs=1.0, num_epochs=3, momentum=0.9,
              nesterov=True, weight_decay=0.1, learning_rate=0.2)
  lr = experiment.create_learning_rate_fn(best, steps_per_epoch=10)
  assert lr(0) == 0 and lr(5) == pytest.approx(0.1) and lr(10) == pytest.approx(0.2)
  assert lr(30) == pytest.approx(0.0)
  best.num_train_steps = 20  # A run cut short decays to 0 at its own end.
  assert experiment.create_learning_rate_fn(best, steps_per_epoch=10)(20) == pytest.approx(0.0)
  best.num_train_steps = 5  # Shorter than the warmup: it only warms up.
  assert experiment.create_learning_rate_fn(best, steps_per_epoch=10)(5) == pytest.approx(0.1)
  tx = experiment.create_optimizer(best, steps_per_epoch=10)
  params = {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  _, opt_state = tx.update(zero_grads, tx.init(params), params)  # At lr 0.
  updates, _ = tx.update(zero_grads, opt_state, params)
  assert float(jnp.abs(updates['bias']).max()) == 0  # Zero gradient, no decay.
  assert float(jnp.abs(updates['kernel']).max()) > 0


class TinyBN(nn.Module):
  """A conv with BatchNorm and a head: the BatchNorm path at a tiny cost."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train=False):
    x = ConvBlock(4, 3, norm=True, axis_name=sharding.AXIS)(x, train)
    return nn.Dense(self.num_classes)(global_average_pool(x))


def tiny_state(config, model):
  return train_state.create_train_state(jax.random.key(0), model,
                                        experiment.create_optimizer(config, 1),
                                        (config.image_size, config.image_size, 1))


def random_batch(num_devices, per_device, seed=0):
  rng = np.random.default_rng(seed)
  shape = (num_devices, per_device)
  return {'image': rng.integers(0, 256, shape + (28, 28, 1), np.uint8),
          'label': rng.integers(0, 10, shape).astype(np.int32),
          'mask': np.ones(shape, np.int32)}


@pytest.fixture(scope='module')
def bn_step(config):
  """The initial TinyBN state and its state after one pmapped step on 8 devices."""
  state = tiny_state(config, TinyBN())
  p_train_step = experiment.build(config, load_data=False).p_train_step
  new_state, _ = p_train_step(sharding.replicate(state), random_batch(8, 2))
  return state, new_state


def test_batchnorm_statistics_update_in_training_identically_on_every_device(
    config, bn_step):
  state, new_state = bn_step
  mean = new_state.batch_stats['ConvBlock_0']['BatchNorm_0']['mean']
  assert mean.shape == (8, 4)
  assert not np.allclose(mean[0], state.batch_stats['ConvBlock_0']['BatchNorm_0']['mean'])
  # Each device saw other images; axis_name=sharding.AXIS averaged their statistics.
  for leaf in jax.tree.leaves(new_state.batch_stats):
    chex.assert_trees_all_equal(*list(leaf))
  # They are the statistics of the global batch: one device, all 16 images.
  one = jax.devices()[:1]
  step = jax.pmap(functools.partial(steps.train_step, image_size=config.image_size),
                  axis_name=sharding.AXIS, devices=one)
  batch1 = jax.tree.map(lambda x: x.reshape((1, 16) + x.shape[2:]), random_batch(8, 2))
  state1, _ = step(sharding.replicate(state, one), batch1)
  chex.assert_trees_all_close(sharding.unreplicate(new_state.batch_stats),
                              sharding.unreplicate(state1.batch_stats),
                              atol=1e-6)


def test_batchnorm_statistics_stay_fixed_in_evaluation(config, bn_step):
  _, new_state = bn_step
  state = jax.device_get(jax.tree.map(lambda x: x[0], new_state))
  images = steps.preprocess(random_batch(1, 4)['image'][0], config.image_size)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  _, updates = state.apply_fn(variables, images, mutable=['batch_stats'])
  chex.assert_trees_all_equal(updates['batch_stats'], state.batch_stats)
  p_eval_step = experiment.build(config, load_data=False).p_eval_step
  first = p_eval_step(new_state, random_batch(8, 2, seed=1))
  chex.assert_trees_all_equal(first, p_eval_step(new_state, random_batch(8, 2, seed=1)))


def test_a_checkpoint_restores_batchnorm_statistics(config, bn_step, tmp_path):
  _, new_state = bn_step
  saved = jax.device_get(jax.tree.map(lambda x: x[0], new_state))
  manager = checkpoint.create_manager(str(tmp_path))
  checkpoint.save(manager, saved, {'model': 'tiny'})
  manager.wait_until_finished()
  target = checkpoint.weights(tiny_state(config, TinyBN()))
  _, restored = checkpoint.restore(manager.directory, manager.all_steps(), target,
                                   {'model': 'tiny'})
  chex.assert_trees_all_equal(restored['batch_stats'], saved.batch_stats)
  chex.assert_trees_all_equal(restored['params'], saved.params)


def test_a_checkpoint_restores_an_empty_batch_stats(config, tmp_path):
  state = tiny_state(config, nn.Dense(10))
  assert state.batch_stats == {}
  manager = checkpoint.create_manager(str(tmp_path))
  checkpoint.save(manager, state, {'model': 'dense'})
  manager.wait_until_finished()
  _, restored = checkpoint.restore(manager.directory, manager.all_steps(),
                                   checkpoint.weights(state), {'model': 'dense'})
  assert restored['batch_stats'] == {}


@pytest.mark.parametrize('model, params', [
    (classic.AlexNet(), 46_764_746), (classic.VGG(), 128_806_154),
    (classic.NiN(), 1_992_166)])
def test_classic_networks_have_d2ls_parameter_counts_at_224(model, params):
  variables = summary.abstract_variables(model, 224)
  assert summary.count_params(variables['params']) == params


def test_alexnet_and_nin_multiply_adds_at_224():
  assert 0.85 * 0.94e9 < compare.multiply_adds(classic.AlexNet(), 224) < 1.02 * 0.94e9
  assert 0.85 * 0.76e9 < compare.multiply_adds(classic.NiN(), 224) < 1.02 * 0.76e9
