"""A small real JPEG dataset in TFDS's own format, prepared without TensorFlow.

Its images vary in size; train example 1 is grayscale, 2 is CMYK and 3 is a
truncated (corrupt) JPEG; there are 7 classes and an odd number of test images.
Test image 0 is black with a white centre of 80% of its side, so an evaluation
crop (the centre 87.5%) shows white inside and a black rim only at the edges.
"""

import io

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

NAME = 'test_jpegs'  # What the builder below is found by, with no class imported.
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
  """(key, example) pairs of `split`, in order."""
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
    yield i, {'image': io.BytesIO(data), 'label': i % len(CLASS_NAMES)}


class TestJpegs(tfds.core.GeneratorBasedBuilder):
  """The dataset; `tfds.builder(NAME, data_dir=...)` finds it once prepared."""

  VERSION = tfds.core.Version('1.0.0')

  def __init__(self, **kwargs):
    super().__init__(file_format='array_record', **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(names=CLASS_NAMES),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True)  # Example i of a split is the i-th generated.

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in ('train', 'test')}

  def _generate_examples(self, split):
    yield from examples(split)


def prepare(data_dir: str) -> None:
  """Prepares the dataset in `data_dir`, as `tfds build` would."""
  TestJpegs(data_dir=data_dir).download_and_prepare()
