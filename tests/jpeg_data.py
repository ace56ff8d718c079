"""A small real JPEG dataset in TFDS's own format, prepared without TensorFlow.

Its images vary in size; train example 1 is grayscale, 2 is CMYK and 3 is a
truncated (corrupt) JPEG; there are 7 classes and an odd number of test images.
Test image 0 is black with a white centre of 80% of its side, so an evaluation
crop (the centre 87.5%) shows white inside and a black rim only at the edges.
"""

import functools
import io

import numpy as np
from PIL import Image

from googlenet_jax.data import jpeg_builder

NAME = 'test_jpegs'  # What the prepared dataset is found by.
CLASS_NAMES = ('ant', 'bee', 'cat', 'dog', 'eel', 'fox', 'gnu')
NUM_TRAIN, NUM_TEST = 24, 9
GRAY, CMYK, CORRUPT = 1, 2, 3  # Train examples.


def jpeg(pixels: np.ndarray, mode: str = 'RGB') -> bytes:
  out = io.BytesIO()
  Image.fromarray(pixels).convert(mode).save(out, format='JPEG', quality=95)
  return out.getvalue()


def white_centre(side: int) -> np.ndarray:
  """A black square image with a white centred square of 80% of its side."""
  pixels = np.zeros((side, side, 3), np.uint8)
  margin = side // 10
  pixels[margin:side - margin, margin:side - margin] = 255
  return pixels


def examples(split: str):
  """(JPEG bytes, label) of each example of `split`, in order."""
  rng = np.random.default_rng(0 if split == 'train' else 1)
  for i in range(NUM_TRAIN if split == 'train' else NUM_TEST):
    height, width = rng.integers(24, 64, 2)
    pixels = rng.integers(0, 256, (height, width, 3), np.uint8)
    data = jpeg(pixels)
    if split == 'test' and i == 0:
      data = jpeg(white_centre(60))
    elif split == 'train' and i == GRAY:
      data = jpeg(pixels, 'L')
    elif split == 'train' and i == CMYK:
      data = jpeg(pixels, 'CMYK')
    elif split == 'train' and i == CORRUPT:
      data = data[:len(data) // 3]
    yield data, i % len(CLASS_NAMES)


def prepare(data_dir: str) -> None:
  """Prepares the dataset in `data_dir`, as `tfds build` would."""
  jpeg_builder.prepare(NAME, data_dir, CLASS_NAMES,
                       {split: functools.partial(examples, split) for split in ('train', 'test')})
