"""Any TFDS image-classification dataset, prepared as array_record, streamed by name.

`tfds.builder(name, data_dir=...)` finds the prepared dataset with no builder
class and no TensorFlow; its data source reads examples by index, locally or
from gs://. Each batch is decoded and cropped on the host, in grain's worker
processes, to uint8 image_size x image_size RGB: training takes the
Inception-style random-resized crop (area 0.08-1, ratio 3/4-4/3) and a flip,
drawn from (seed, epoch, example index), so a batch depends on nothing but its
step; evaluation resizes and takes the centre 0.875. JPEGs are decoded with
PIL at the smallest scale that still covers the crop (`Image.draft`). An
image that cannot be decoded is masked out of its batch, with one warning.
"""

import contextlib
import functools
import gc
import io
import math
from typing import Iterator, Sequence

from absl import logging
import grain.python as grain
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from googlenet_jax.data.dataset import Dataset
from googlenet_jax.errors import UserError

# The share of the shorter side that evaluation keeps (resize, then centre crop).
EVAL_CROP = 0.875
# The random-resized crop's area (a share of the image) and width/height ratio.
CROP_AREA = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10
# Batches each process decodes ahead of the one being read.
READ_AHEAD = 2
# ImageNet's mean and standard deviation of each RGB channel, in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def random_crop_box(rng: np.random.Generator, height: int,
                    width: int) -> tuple[int, int, int, int]:
  """(top, left, h, w) of an Inception-style random-resized crop of an H x W image.

  As torchvision's RandomResizedCrop: up to 10 draws of an area and a
  log-uniform ratio, else the whole image cut to the nearest allowed ratio.
  """
  area = height * width
  for _ in range(CROP_ATTEMPTS):
    target = area * rng.uniform(*CROP_AREA)
    ratio = math.exp(rng.uniform(*np.log(CROP_RATIO)))
    w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  ratio = width / height
  if ratio < CROP_RATIO[0]:
    w, h = width, round(width / CROP_RATIO[0])
  elif ratio > CROP_RATIO[1]:
    w, h = round(height * CROP_RATIO[1]), height
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def centre_crop_box(height: int, width: int) -> tuple[int, int, int, int]:
  """(top, left, h, w) of the centred square of EVAL_CROP of the shorter side."""
  side = max(1, round(EVAL_CROP * min(height, width)))
  return (height - side) // 2, (width - side) // 2, side, side


def decode_crop(data: bytes, box_of, size: int) -> np.ndarray:
  """The JPEG (or PNG) `data` cropped to `box_of(height, width)` and resized to size x size.

  PIL decodes at the smallest power-of-two scale whose crop still has `size`
  pixels a side, so a small crop of a large photograph costs a fraction of a
  full decode. Grayscale and CMYK images become RGB.

  Returns:
    uint8 [size, size, 3].
  """
  image = Image.open(io.BytesIO(data))
  width, height = image.size
  top, left, h, w = box_of(height, width)
  # Decode no larger than needed: the crop at the reduced scale stays >= size.
  image.draft('RGB', (math.ceil(width * size / w), math.ceil(height * size / h)))
  scale_x, scale_y = image.size[0] / width, image.size[1] / height
  box = (left * scale_x, top * scale_y, (left + w) * scale_x, (top + h) * scale_y)
  if image.mode != 'RGB':  # convert() would copy an RGB image whole, for nothing.
    image = image.convert('RGB')
  return np.asarray(image.resize((size, size), Image.BILINEAR, box=box), np.uint8)


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
  """The randomness of one example's crop and flip in one epoch."""
  return np.random.default_rng((seed, epoch, index))


def training_image(data: bytes, size: int, rng: np.random.Generator) -> np.ndarray:
  """The random-resized crop of the image `data`, flipped left-right with probability 1/2."""
  image = decode_crop(data, functools.partial(random_crop_box, rng), size)
  return image[:, ::-1] if rng.random() < 0.5 else image


def read_batch(data_source, size: int, train: bool, seed: int, epoch: int,
               indices: np.ndarray) -> dict[str, np.ndarray]:
  """One batch of `data_source`'s examples at `indices`, decoded and cropped.

  Runs in a worker process. An image that cannot be decoded is zeros with
  'mask' False.
  """
  examples = data_source.__getitems__([int(i) for i in indices])
  images = np.zeros((len(indices), size, size, 3), np.uint8)
  mask = np.ones(len(indices), bool)
  for row, (index, example) in enumerate(zip(indices, examples)):
    try:
      images[row] = (training_image(example['image'], size, example_rng(seed, epoch, index))
                     if train else decode_crop(example['image'], centre_crop_box, size))
    except (OSError, ValueError, SyntaxError):  # PIL's errors for bad image bytes.
      mask[row] = False
  labels = np.array([example['label'] for example in examples], np.int32)
  return {'image': images, 'label': labels, 'mask': mask}


class StreamedSource:
  """A split of a prepared TFDS dataset, decoded and cropped batch by batch.

  Args:
    data_source: the split's `as_data_source`, its images left as bytes.
    split: the split's name, for messages.
    image_size: the crop's side.
    num_workers: grain's worker processes; 0 decodes in this process.
  """

  def __init__(self, data_source, split: str, image_size: int, num_workers: int):
    self._data_source = data_source
    self._split = split
    self._image_size = image_size
    self._num_workers = num_workers
    self._warned = set()  # The unreadable examples already named.

  def __len__(self) -> int:
    return len(self._data_source)

  def read(self, index_batches: Sequence[np.ndarray], *, train: bool, seed: int,
           epoch: int) -> Iterator[dict[str, np.ndarray]]:
    """`input_pipeline.Source.read`, in grain's worker processes."""
    dataset = grain.MapDataset.source(list(index_batches)).map(functools.partial(
        read_batch, self._data_source, self._image_size, train, seed, epoch))
    # A batch is one element, decoded by one thread of each process: grain's
    # defaults (16 threads, 500 elements ahead) would hold up to 500 batches
    # per worker when the chips are slower than the host, and would spread a
    # process with no workers over every core.
    batches = dataset.to_iter_dataset(grain.ReadOptions(
        num_threads=1, prefetch_buffer_size=READ_AHEAD))
    if self._num_workers:
      batches = batches.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self._num_workers))
    try:
      with contextlib.closing(iter(batches)) as iterator:
        for indices, batch in zip(index_batches, iterator):
          self._warn_unreadable(indices[~batch['mask']])
          # Out of the workers' shared memory at once: a CPU device's arrays may
          # alias the host's, which would keep each block until the process ends.
          yield {name: np.array(array) for name, array in batch.items()}
    finally:
      # grain's closed iterator keeps its last blocks in reference cycles: free
      # them now, or multiprocessing reports them as leaked when the run exits.
      gc.collect()

  def _warn_unreadable(self, indices: np.ndarray) -> None:
    """One warning for each unreadable example, the first time it is met."""
    for index in sorted(set(indices.tolist()) - self._warned):
      self._warned.add(index)
      try:
        Image.open(io.BytesIO(self._data_source[index]['image'])).load()
        reason = 'unknown'
      except (OSError, ValueError, SyntaxError) as e:
        reason = str(e) or type(e).__name__
      logging.warning('Example %d of the %s split cannot be decoded (%s): it is left out '
                      'of its batches and counted as skipped.', index, self._split, reason)


def builder(name: str, data_dir: str):
  """The prepared dataset `name` in `data_dir` ('' = tfds's default).

  Raises:
    UserError: it is not prepared there; the line says how to prepare it.
  """
  try:
    prepared = tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise UserError(not_prepared(name, data_dir)) from e
  if not prepared.is_prepared():  # A builder tfds ships, not yet run here.
    raise UserError(not_prepared(name, data_dir))
  return prepared


def not_prepared(name: str, data_dir: str) -> str:
  """How to prepare `name` once, as one line."""
  where = data_dir or '~/tensorflow_datasets'
  build = (f'tfds build {name} --data_dir={where} --file_format=array_record')
  if name == 'imagenet2012':
    return (f'Dataset imagenet2012 is not prepared in {where}: put ILSVRC2012_img_train.tar '
            'and ILSVRC2012_img_val.tar in a manual directory and run, once, in a separate '
            'environment with TensorFlow (pip install tensorflow tensorflow-datasets; '
            'preparing ImageNet needs it, training does not): '
            f'{build} --manual_dir=MANUAL_DIR (docs/imagenet.md).')
  return (f'Dataset {name} is not prepared in {where} (nor a dataset of this codebase: '
          f'fashion_mnist): prepare it once with `{build}`, or give --config.data_dir '
          'where it is.')


def check_features(info) -> None:
  """Raises UserError unless `info` has an Image feature 'image' and a ClassLabel 'label'."""
  features = dict(info.features.items())
  if not (isinstance(features.get('image'), tfds.features.Image)
          and isinstance(features.get('label'), tfds.features.ClassLabel)):
    found = ', '.join(f'{k} ({type(v).__name__})' for k, v in features.items())
    raise UserError(f'Dataset {info.name} is not an image classification dataset: it '
                    f'has {found}, not an Image "image" and a ClassLabel "label".')


def num_classes(name: str, data_dir: str) -> int:
  """The number of classes of the prepared dataset `name`, from its info alone.

  Raises:
    UserError: it is not prepared, or is not an image classification dataset.
  """
  info = builder(name, data_dir).info
  check_features(info)
  return info.features['label'].num_classes


def load(name: str, data_dir: str, *, image_size: int, train_split: str, eval_split: str,
         data_workers: int) -> Dataset:
  """The prepared TFDS dataset `name`, its two splits streamed.

  Raises:
    UserError: it is not prepared, is not an image classification dataset,
      lacks a split, or is not in the array_record format.
  """
  prepared = builder(name, data_dir)
  check_features(prepared.info)
  splits = {'train': train_split, 'test': eval_split}
  for split in splits.values():
    try:
      prepared.info.splits[split]  # A split, or a slice of splits: 'train[:10%]'.
    except (KeyError, ValueError) as e:
      raise UserError(f'Dataset {name} has no split {split!r}: it has '
                      f'{", ".join(sorted(prepared.info.splits))} (set '
                      '--config.train_split or --config.eval_split; a slice such as '
                      "'train[:10%]' works too).") from e
  if prepared.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise UserError(f'Dataset {name} in {prepared.data_dir} is stored as '
                    f'{prepared.info.file_format.value}, which cannot be read by index: '
                    'prepare it again with --file_format=array_record.')
  sources = {role: StreamedSource(
      prepared.as_data_source(split, decoders={'image': tfds.decode.SkipDecoding()}),
      split, image_size, data_workers) for role, split in splits.items()}
  return Dataset(sources, tuple(prepared.info.features['label'].names))
