"""Shapes, parameter counts and padding of the chapter's Inception and GoogLeNet."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from googlenet_jax import experiment
from googlenet_jax import train_state
from googlenet_jax.models import ConvBlock, GoogLeNet, Inception, conv_lowering
from googlenet_jax.tools import summary
from conftest import normal, uniform


def test_inception_keeps_height_width_and_sums_channels():
  block = Inception(64, (96, 128), (16, 32), 32)
  images = jnp.ones((2, 12, 12, 192))
  variables = jax.eval_shape(block.init, jax.random.key(0), images)
  chex.assert_shape(jax.eval_shape(block.apply, variables, images),
                    (2, 12, 12, 64 + 128 + 32 + 32))


def test_inception_branches_are_relu_outputs():
  block = Inception(4, (3, 5), (2, 6), 7)
  images = normal((1, 5, 5, 3), seed=1)
  variables = train_state.jit_run_once(block.init)(jax.random.key(0), images)
  out = train_state.jit_run_once(block.apply)(variables, images)
  chex.assert_shape(out, (1, 5, 5, 22))
  assert jnp.all(out >= 0)


def test_googlenet_block_shapes_at_96():
  model, images = GoogLeNet(), jnp.zeros((1, 96, 96, 1))
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  logits, state = jax.eval_shape(
      functools.partial(model.apply, capture_intermediates=True), variables, images)
  intermediates = state['intermediates']
  shapes = {name: intermediates[name]['__call__'][0].shape
            for name in ('b1', 'b2', 'b3', 'b4', 'b5', 'head')}
  assert shapes == {'b1': (1, 24, 24, 64), 'b2': (1, 12, 12, 192),
                    'b3': (1, 6, 6, 480), 'b4': (1, 3, 3, 832),
                    'b5': (1, 1024), 'head': (1, 10)}
  chex.assert_shape(logits, (1, 10))


def test_googlenet_has_the_chapters_parameter_count():
  variables = jax.eval_shape(GoogLeNet(num_classes=10).init, jax.random.key(0),
                             jnp.zeros((1, 96, 96, 1)))
  assert summary.count_params(variables) == 5_977_530


def test_kernels_are_xavier_uniform_and_biases_zero():
  # b2's 3x3 conv, 64 -> 192, built as GoogLeNet builds it (the full network's
  # init would cost a compile of every layer's initialiser for one kernel).
  conv = ConvBlock(192, 3, conv=GoogLeNet().conv)
  variables = train_state.jit_run_once(conv.init)(jax.random.key(0),
                                                  jnp.zeros((1, 12, 12, 64)))
  params = variables['params']['Conv_0']
  kernel = params['kernel']
  assert kernel.shape == (3, 3, 64, 192)
  fan_in, fan_out = 3 * 3 * 64, 3 * 3 * 192
  limit = np.sqrt(6 / (fan_in + fan_out))
  assert float(jnp.abs(kernel).max()) <= limit
  assert float(jnp.abs(kernel).max()) > 0.95 * limit
  np.testing.assert_allclose(float(kernel.std()), limit / np.sqrt(3), rtol=0.02)
  assert not jnp.any(params['bias'])


def symmetric_reference_b1(params, images):
  """b1 with PyTorch's padding written out: conv pad 3, then max-pool pad 1 (-inf)."""
  conv = jax.lax.conv_general_dilated(
      images, params['kernel'], window_strides=(2, 2), padding=((3, 3), (3, 3)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + params['bias']
  return jax.lax.reduce_window(jax.nn.relu(conv), -jnp.inf, jax.lax.max,
                               (1, 3, 3, 1), (1, 2, 2, 1),
                               ((0, 0), (1, 1), (1, 1), (0, 0)))


def flax_same_b1(params, images):
  conv = jax.lax.conv_general_dilated(
      images, params['kernel'], (2, 2), 'SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + params['bias']
  return jax.lax.reduce_window(jax.nn.relu(conv), -jnp.inf, jax.lax.max,
                               (1, 3, 3, 1), (1, 2, 2, 1), 'SAME')


def test_strided_conv_and_pool_pad_symmetrically_not_like_same():
  images = uniform((2, 96, 96, 1), seed=2)
  # GoogLeNet's b1 as the network builds it, initialised and applied alone.
  model = GoogLeNet()
  stem = lambda module, x: module.b1(x)
  variables = train_state.jit_run_once(functools.partial(model.init, method=stem))(
      jax.random.key(0), images)
  b1 = train_state.jit_run_once(functools.partial(model.apply, method=stem))(variables, images)
  params = variables['params']['b1']['layers_0']['Conv_0']
  chex.assert_trees_all_close(b1, symmetric_reference_b1(params, images), atol=1e-5)
  same = flax_same_b1(params, images)
  chex.assert_equal_shape([b1, same])
  assert float(jnp.abs(b1 - same).max()) > 1e-2


def test_summary_counts_the_chapters_parameters_and_multiply_adds():
  stats = summary.block_stats(GoogLeNet(), 96)
  assert [s.name for s in stats] == ['b1', 'b2', 'b3', 'b4', 'b5', 'head']
  assert sum(s.params for s in stats) == 5_977_530
  total_macs = sum(s.flops for s in stats) / 2
  # XLA counts multiply-adds at valid (unpadded) positions only, so it lands a
  # little below the chapter's padded count of ~277M at 96.
  assert 0.8 * 277e6 < total_macs < 1.02 * 277e6


CONV_CASES = [  # (kernel, stride, padding): the shapes the models use.
    (1, 1, 0), (3, 1, 1), (5, 1, 2), (7, 2, 3), (3, 2, 0), (11, 4, 1), (3, 1, 0)]


@pytest.mark.parametrize('kernel, stride, padding', CONV_CASES)
def test_conv_as_matmul_gives_lax_conv_and_its_gradients(kernel, stride, padding):
  x = normal((2, 13, 13, 3), seed=0)
  w = normal((kernel, kernel, 3, 4), seed=1)
  pads = ((padding, padding), (padding, padding))
  def lax_conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), pads,
                                        dimension_numbers=conv_lowering.NHWC_HWIO,
                                        precision='highest')
  def matmul(x, w):
    return conv_lowering.conv_as_matmul(x, w, (stride, stride), pads, 'highest')
  # Jitted: op by op, each of the k x k windows' slices would compile apart.
  jit = train_state.jit_run_once
  chex.assert_trees_all_close(jit(matmul)(x, w), lax_conv(x, w), rtol=1e-5, atol=1e-5)
  grads = lambda f: jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), (0, 1)))(x, w)
  chex.assert_trees_all_close(grads(matmul), grads(lax_conv), rtol=1e-4, atol=1e-4)


POOL_CASES = [  # (window, stride, padding): GoogLeNet's pools and Inception-v3's.
    (3, 1, 1), (3, 2, 1), (3, 2, 0)]


@pytest.mark.parametrize('window, stride, padding', POOL_CASES)
def test_indexed_max_pool_gives_max_pool_and_its_gradient(window, stride, padding):
  # ReLU outputs on a coarse grid, as the networks' pools see: many windows
  # hold their maximum twice or more (0 above all), where the gradient must
  # still go to the first one only.
  x = np.round(4 * np.maximum(normal((2, 13, 13, 3), seed=0), 0)) / 4
  args = ((window, window), (stride, stride), ((padding, padding),) * 2)
  pooled = nn.max_pool(x, *args)
  padded = jnp.pad(x, ((0, 0), *args[2], (0, 0)), constant_values=-jnp.inf)
  maxima = sum(view == pooled for _, view in conv_lowering.windows(padded, *args[:2]))
  assert jnp.sum(maxima > 1) > 20
  jit = train_state.jit_run_once
  indexed_max_pool = jit(conv_lowering.indexed_max_pool, static_argnums=(1, 2, 3))
  chex.assert_trees_all_equal(indexed_max_pool(x, *args), pooled)
  g = normal(pooled.shape, seed=1)
  grad = lambda pool: jit(jax.grad(lambda x: jnp.sum(pool(x, *args) * g)))(x)
  chex.assert_trees_all_close(grad(conv_lowering.indexed_max_pool), grad(nn.max_pool),
                              atol=1e-6)


def test_googlenet_gives_the_same_logits_in_both_forms():
  images = uniform((2, 32, 32, 1), seed=3)
  variables = train_state.init_variables(GoogLeNet(), (32, 32, 1), jax.random.key(0))
  logits = {form: train_state.jit_run_once(googlenet_in(form).apply)(variables, images)
            for form in ('xla', 'matmul')}
  chex.assert_trees_all_close(logits['matmul'], logits['xla'], rtol=1e-4, atol=1e-5)


def googlenet_in(form: str) -> GoogLeNet:
  return GoogLeNet(conv=conv_lowering.conv_module(form),
                   max_pool=conv_lowering.max_pool(form))


def test_the_cpu_forms_gradient_has_no_convolution_and_no_select_and_scatter():
  # Each op's gradient is checked above; this checks the network uses them all.
  images = jnp.zeros((2, 32, 32, 1))
  variables = jax.eval_shape(GoogLeNet().init, jax.random.key(0), images)
  def gradient_text(form):
    loss = lambda v: jnp.sum(googlenet_in(form).apply(v, images))
    return jax.jit(jax.grad(loss)).lower(variables).as_text()
  xla, matmul = gradient_text('xla'), gradient_text('matmul')
  assert 'stablehlo.convolution' in xla and 'select_and_scatter' in xla
  assert 'stablehlo.convolution' not in matmul
  assert 'select_and_scatter' not in matmul


def test_auto_form_is_matmuls_on_a_cpu_only():
  assert conv_lowering.uses_matmuls('auto', backend='cpu')
  assert not conv_lowering.uses_matmuls('auto', backend='gpu')
  assert not conv_lowering.uses_matmuls('auto', backend='tpu')
  assert conv_lowering.uses_matmuls('matmul', backend='gpu')
  assert not conv_lowering.uses_matmuls('xla', backend='cpu')


def test_flops_count_convolutions_not_their_padded_matmuls(config):
  x = jnp.ones((1, 4, 4, 1))
  w = jnp.ones((3, 3, 1, 1))
  padding = ((1, 1), (1, 1))
  lax_conv = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), padding, dimension_numbers=conv_lowering.NHWC_HWIO)
  matmul = lambda x, w: conv_lowering.conv_as_matmul(x, w, (1, 1), padding)
  # 3x3 windows over a 4x4 image padded by 1: 100 of the 144 products fall
  # inside; as a matmul over the padded windows all 144 are multiplied.
  assert summary.xla_flops(lax_conv, x, w) == 2 * 100
  assert summary.xla_flops(matmul, x, w) >= 2 * 144
  # So the summary counts the convolution form, whatever the config trains in.
  tables = {}
  for form in ('matmul', 'xla'):
    form_config = config.copy_and_resolve_references()
    form_config.conv_lowering = form
    tables[form] = summary.summary_table(experiment.create_model(form_config), 'googlenet',
                                         (96, 96, 1))
  assert tables['matmul'] == tables['xla']
