"""Shapes, parameter counts and padding of the chapter's Inception and GoogLeNet."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from googlenet_jax import summary
from googlenet_jax.models import GoogLeNet, Inception


def init_and_capture(model, images):
  variables = model.init(jax.random.key(0), images)
  logits, state = model.apply(variables, images, capture_intermediates=True)
  return variables, logits, state['intermediates']


def test_inception_keeps_height_width_and_sums_channels():
  block = Inception(64, (96, 128), (16, 32), 32)
  images = jnp.ones((2, 12, 12, 192))
  variables = block.init(jax.random.key(0), images)
  chex.assert_shape(block.apply(variables, images), (2, 12, 12, 64 + 128 + 32 + 32))


def test_inception_branches_are_relu_outputs():
  block = Inception(4, (3, 5), (2, 6), 7)
  images = jax.random.normal(jax.random.key(1), (1, 5, 5, 3))
  out = block.apply(block.init(jax.random.key(0), images), images)
  chex.assert_shape(out, (1, 5, 5, 22))
  assert jnp.all(out >= 0)


def test_googlenet_block_shapes_at_96():
  _, logits, intermediates = init_and_capture(GoogLeNet(), jnp.zeros((1, 96, 96, 1)))
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
  variables = GoogLeNet().init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
  kernel = variables['params']['b2']['layers_2']['kernel']  # 3x3, 64 -> 192
  fan_in, fan_out = 3 * 3 * 64, 3 * 3 * 192
  limit = np.sqrt(6 / (fan_in + fan_out))
  assert float(jnp.abs(kernel).max()) <= limit
  assert float(jnp.abs(kernel).max()) > 0.95 * limit
  np.testing.assert_allclose(float(kernel.std()), limit / np.sqrt(3), rtol=0.02)
  assert not jnp.any(variables['params']['b2']['layers_2']['bias'])


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
  images = jax.random.uniform(jax.random.key(2), (2, 96, 96, 1))
  variables, _, intermediates = init_and_capture(GoogLeNet(), images)
  params = variables['params']['b1']['layers_0']
  b1 = intermediates['b1']['__call__'][0]
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
