"""On-device augmentation: each transform, and keys that ignore the device split."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from googlenet_jax import augment
from googlenet_jax import sharding
from googlenet_jax import steps
from googlenet_jax import train_state
from googlenet_jax import validation
from googlenet_jax.errors import UserError
from conftest import IMAGE_SIZE, uniform

KEYS = jax.random.split(jax.random.key(0), 64)
ALL = augment.Augmentation(crop_padding=3, flip=True, erase_probability=0.5)
augment_batch = train_state.jit_run_once(augment.augment_batch, static_argnums=0)


def random_images(n, seed=0):
  return jnp.asarray(uniform((n, 28, 28, 1), seed))


def test_random_crop_is_a_window_of_the_zero_padded_image():
  image = random_images(1)[0]
  padded = np.pad(image, ((3, 3), (3, 3), (0, 0)))
  windows = {(top, left): padded[top:top + 28, left:left + 28]
             for top in range(7) for left in range(7)}
  seen = set()
  for key in KEYS:
    crop = np.asarray(augment.random_crop(key, image, 3))
    matches = [offset for offset, window in windows.items()
               if np.array_equal(window, crop)]
    assert len(matches) == 1, 'the crop is not a window of the padded image'
    seen.add(matches[0])
  assert len(seen) > 20  # Many of the 49 windows.


def test_random_flip_mirrors_about_half_the_time():
  image = random_images(1)[0]
  flips = [augment.random_flip(key, image) for key in KEYS]
  mirrored = [bool(jnp.array_equal(f, image[:, ::-1])) for f in flips]
  unchanged = [bool(jnp.array_equal(f, image)) for f in flips]
  assert all(m != u for m, u in zip(mirrored, unchanged))
  assert 16 < sum(mirrored) < 48


def test_random_erase_replaces_one_rectangle_of_the_allowed_area():
  image = jnp.full((28, 28, 1), -1.0)  # Noise is in [0, 1): erased pixels stand out.
  for key in KEYS[:16]:
    erased = np.asarray(augment.random_erase(key, image, probability=1.0))[..., 0] >= 0
    rows, cols = np.nonzero(erased)
    height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
    assert erased.sum() == height * width  # A filled rectangle.
    assert 0.01 * 28 * 28 <= erased.sum() <= 0.3 * 28 * 28
  assert jnp.array_equal(augment.random_erase(KEYS[0], image, probability=0.0), image)


def test_batch_keys_depend_on_the_global_index_not_the_split():
  images = random_images(8)
  key = jax.random.key(1)
  whole = augment_batch(ALL, key, images, 0)
  halves = jnp.concatenate([augment_batch(ALL, key, images[:4], 0),
                            augment_batch(ALL, key, images[4:], 4)])
  assert jnp.array_equal(whole, halves)
  assert not jnp.array_equal(whole, images)
  assert not jnp.array_equal(augment_batch(ALL, key, images, 1)[1:], whole[1:])


class Linear(nn.Module):
  """A dense layer on the pixels: its gradient sees where every pixel moved."""

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(10)(x.reshape((x.shape[0], -1)))


@pytest.fixture(scope='module')
def linear_state(config):
  return train_state.create_train_state(jax.random.key(0), Linear(),
                                        optax.sgd(config.learning_rate),
                                        (config.image_size, config.image_size, 1))


def batch(num_devices, per_device):
  rng = np.random.default_rng(0)
  shape = (num_devices, per_device)
  return {'image': rng.integers(0, 256, shape + (28, 28, 1), np.uint8),
          'label': rng.integers(0, 10, shape).astype(np.int32)}


def step_params(state, global_batch, num_devices, augmentation):
  step = functools.partial(steps.train_step, image_size=IMAGE_SIZE,
                           augmentation=augmentation, seed=0)
  devices = jax.devices()[:num_devices]
  sharded = jax.tree.map(lambda x: x.reshape((num_devices, -1) + x.shape[2:]),
                         global_batch)
  new_state, _ = jax.pmap(step, axis_name=sharding.AXIS, devices=devices)(
      sharding.replicate(state, devices), sharded)
  return sharding.unreplicate(new_state.params)


def test_an_augmented_step_on_8_devices_equals_it_on_1(linear_state):
  global_batch = batch(1, 16)
  params8 = step_params(linear_state, global_batch, 8, ALL)
  params1 = step_params(linear_state, global_batch, 1, ALL)
  plain = step_params(linear_state, global_batch, 1, augment.Augmentation())
  chex.assert_trees_all_close(params8, params1, rtol=1e-5, atol=1e-6)
  assert not np.allclose(params1['Dense_0']['kernel'], plain['Dense_0']['kernel'])


def test_augmentation_changes_with_the_step_and_repeats_for_the_same_step():
  images = batch(1, 4)['image']
  preprocess = jax.pmap(
      lambda x, step: steps.augmented_preprocess(x, 28, ALL, 0, step),
      axis_name=sharding.AXIS, in_axes=(0, None), devices=jax.devices()[:1])
  at = lambda step: preprocess(images, step)
  assert jnp.array_equal(at(3), at(3))
  assert not jnp.array_equal(at(3), at(4))


@pytest.mark.parametrize('field, value, message', [
    ('augment_crop_padding', -1, 'augment_crop_padding must be 0'),
    ('augment_erase_probability', 1.5, r'augment_erase_probability must be in \[0, 1\]'),
])
def test_check_config_rejects_bad_augmentation(config, field, value, message):
  bad = config.copy_and_resolve_references()
  bad[field] = value
  with pytest.raises(UserError, match=message):
    validation.check_config(bad)
