"""Training-time augmentation on the device: random crop, horizontal flip, random erasing.

It runs inside the pmapped train step on the images at the dataset's size,
before they are resized to the model's input. Example i of the global batch at step s draws its
randomness from fold_in(fold_in(key(seed), s), i), so it is augmented the same
way whatever the number of devices or hosts, and a resumed run augments exactly
as the uninterrupted one did: there is no PRNG state to checkpoint.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

# Random erasing's rectangle: its share of the image and its height/width ratio
# (Zhong et al., 2020).
ERASE_AREA = (0.02, 0.25)
ERASE_ASPECT = (0.3, 3.3)


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Which augmentations a training step applies; the default applies none."""
  crop_padding: int = 0  # Zero-pad by this many pixels, crop back at random.
  flip: bool = False  # Mirror left-right with probability 1/2.
  erase_probability: float = 0.0  # Chance of erasing a random rectangle.

  @property
  def enabled(self) -> bool:
    return bool(self.crop_padding or self.flip or self.erase_probability)


def random_crop(key: jax.Array, image: jax.Array, padding: int) -> jax.Array:
  """Zero-pads an (H, W, C) image by `padding` on every side, crops a random H x W."""
  padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  top, left = jax.random.randint(key, (2,), 0, 2 * padding + 1)
  return jax.lax.dynamic_slice(padded, (top, left, 0), image.shape)


def random_flip(key: jax.Array, image: jax.Array) -> jax.Array:
  """The (H, W, C) image mirrored left-right with probability 1/2."""
  return jnp.where(jax.random.bernoulli(key), image[:, ::-1], image)


def random_erase(key: jax.Array, image: jax.Array, probability: float) -> jax.Array:
  """With `probability`, a random rectangle of the (H, W, C) image set to uniform noise.

  The rectangle covers ERASE_AREA of the image, with a log-uniform height/width
  ratio in ERASE_ASPECT, clipped to the image.
  """
  height, width, _ = image.shape
  apply_key, area_key, aspect_key, top_key, left_key, noise_key = jax.random.split(key, 6)
  area = jax.random.uniform(area_key, minval=ERASE_AREA[0],
                            maxval=ERASE_AREA[1]) * height * width
  aspect = jnp.exp(jax.random.uniform(aspect_key, minval=math.log(ERASE_ASPECT[0]),
                                      maxval=math.log(ERASE_ASPECT[1])))
  rect_height = jnp.clip(jnp.round(jnp.sqrt(area * aspect)), 1, height).astype(jnp.int32)
  rect_width = jnp.clip(jnp.round(jnp.sqrt(area / aspect)), 1, width).astype(jnp.int32)
  top = jax.random.randint(top_key, (), 0, height - rect_height + 1)
  left = jax.random.randint(left_key, (), 0, width - rect_width + 1)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  inside = ((rows >= top) & (rows < top + rect_height)
            & (cols >= left) & (cols < left + rect_width))
  erase = inside[:, :, None] & jax.random.bernoulli(apply_key, probability)
  return jnp.where(erase, jax.random.uniform(noise_key, image.shape), image)


def augment_image(augmentation: Augmentation, key: jax.Array,
                  image: jax.Array) -> jax.Array:
  """One (H, W, C) float image in [0, 1] with `augmentation` applied, in its order."""
  crop_key, flip_key, erase_key = jax.random.split(key, 3)
  if augmentation.crop_padding:
    image = random_crop(crop_key, image, augmentation.crop_padding)
  if augmentation.flip:
    image = random_flip(flip_key, image)
  if augmentation.erase_probability:
    image = random_erase(erase_key, image, augmentation.erase_probability)
  return image


def augment_batch(augmentation: Augmentation, key: jax.Array, images: jax.Array,
                  first_index: jax.Array) -> jax.Array:
  """(N, H, W, C) images; image n uses fold_in(key, first_index + n).

  `first_index` is the position of images[0] in the global batch, so each
  example's key does not depend on how the global batch is split.
  """
  indices = first_index + jnp.arange(images.shape[0])
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)
  return jax.vmap(augment_image, in_axes=(None, 0, 0))(augmentation, keys, images)
