"""Fashion-MNIST as a tfds dataset, built from the original IDX files, held in memory.

The builder needs no TensorFlow: it parses the four gzipped IDX files itself and
writes `array_record` files, which `builder.as_data_source(split)` reads back
by index. `load` reads each split once into host memory (all of Fashion-MNIST
is about 55 MB as uint8).
"""

import gzip
import hashlib
import os
import zlib

import jax
from jax.experimental import multihost_utils
import numpy as np
import requests
import tensorflow_datasets as tfds

from googlenet_jax import errors
from googlenet_jax import input_pipeline
from googlenet_jax.data.dataset import Dataset

CLASS_NAMES = (
    't-shirt/top', 'trouser', 'pullover', 'dress', 'coat',
    'sandal', 'shirt', 'sneaker', 'bag', 'ankle boot',
)
IMAGE_SHAPE = (28, 28, 1)
# Debian's `dataset-fashion-mnist` package installs the IDX files here.
DEFAULT_SOURCE_DIR = '/usr/share/datasets/fashion-mnist'
# The mirror tfds's own `fashion_mnist` builder downloads from.
URL = 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/'
# Split -> (images file, labels file).
FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
# sha256 of the decompressed files: re-gzipped copies (Debian's) still match.
SHA256 = {
    'train-images-idx3-ubyte.gz':
        'c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888',
    'train-labels-idx1-ubyte.gz':
        'bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9',
    't10k-images-idx3-ubyte.gz':
        '5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b',
    't10k-labels-idx1-ubyte.gz':
        '0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34',
}
# IDX type code for unsigned bytes, the only type Fashion-MNIST uses.
_UBYTE = 0x08
# Seconds to wait for the mirror before calling the machine offline; tfds's own
# retries would otherwise take minutes to give up.
_PROBE_TIMEOUT = 10


class DataError(errors.UserError):
  """The Fashion-MNIST files are missing, malformed or not the real data."""


def read_idx(path, ndim, sha256=None) -> np.ndarray:
  """Reads a gzipped IDX file of unsigned bytes with `ndim` dimensions.

  Args:
    path: the `.gz` file.
    ndim: the number of dimensions the file must declare.
    sha256: if given, the expected sha256 of the decompressed bytes.

  Returns:
    A uint8 array with the shape the header declares.

  Raises:
    DataError: the file is unreadable, its header or length is wrong, or its
      checksum does not match.
  """
  try:
    with gzip.open(path, 'rb') as f:
      data = f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(f'cannot read {path}: {e}') from e
  header_size = 4 + 4 * ndim
  if len(data) < header_size:
    raise DataError(f'{path} is truncated: {len(data)} bytes, no IDX header')
  magic = (0, 0, _UBYTE, ndim)
  if tuple(data[:4]) != magic:
    raise DataError(f'{path} has magic number {data[:4].hex()}, expected '
                    f'{bytes(magic).hex()} (IDX, unsigned bytes, {ndim}-D)')
  shape = tuple(int(d) for d in np.frombuffer(data, '>u4', ndim, offset=4))
  expected_size = header_size + int(np.prod(shape))
  if len(data) != expected_size:
    raise DataError(f'{path} has {len(data)} bytes, but its header {shape} '
                    f'needs {expected_size}: the file is truncated or corrupt')
  if sha256 and hashlib.sha256(data).hexdigest() != sha256:
    raise DataError(f'{path} is not the real Fashion-MNIST file: its sha256 '
                    f'is {hashlib.sha256(data).hexdigest()}, expected {sha256}')
  return np.frombuffer(data, np.uint8, offset=header_size).reshape(shape)


def read_split(images_path, labels_path, images_sha256=None,
               labels_sha256=None):
  """Reads and checks one split's images [N, 28, 28, 1] and labels [N]."""
  images = read_idx(images_path, 3, images_sha256)
  labels = read_idx(labels_path, 1, labels_sha256)
  if images.shape[1:] != IMAGE_SHAPE[:2]:
    raise DataError(f'{images_path} holds {images.shape[1]}x{images.shape[2]} '
                    f'images, expected {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}')
  if len(images) != len(labels):
    raise DataError(f'{images_path} holds {len(images)} images but '
                    f'{labels_path} holds {len(labels)} labels')
  if labels.size and labels.max() >= len(CLASS_NAMES):
    raise DataError(f'{labels_path} has label {labels.max()}, expected '
                    f'0..{len(CLASS_NAMES) - 1}')
  return images[..., np.newaxis], labels


class FashionMnistIdx(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST read from IDX files in a local directory or downloaded."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Built from the IDX files, without TensorFlow.'}

  def __init__(self, *, source_dir=DEFAULT_SOURCE_DIR, verify_checksums=True,
               **kwargs):
    """Creates the builder.

    Args:
      source_dir: directory holding the four `*-ubyte.gz` IDX files; when they
        are not all there, they are downloaded.
      verify_checksums: check the decompressed files against `SHA256`; turn it
        off only for test files. Structure checks always run.
      **kwargs: passed to `tfds.core.GeneratorBasedBuilder`, e.g. `data_dir`.
    """
    self._source_dir = source_dir
    self._verify_checksums = verify_checksums
    super().__init__(file_format='array_record', **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='Fashion-MNIST: 28x28 grayscale images of Zalando '
                    'articles in 10 classes, 60,000 train and 10,000 test.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
            'label': tfds.features.ClassLabel(names=CLASS_NAMES),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://github.com/zalandoresearch/fashion-mnist',
        # Example i of a split is row i of its IDX file.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    paths = self._source_paths(dl_manager)
    sha256 = SHA256 if self._verify_checksums else {}
    # Read every file before writing anything, so a bad file leaves no split.
    splits = {
        split: read_split(paths[images], paths[labels],
                          sha256.get(images), sha256.get(labels))
        for split, (images, labels) in FILES.items()
    }
    return {split: self._generate_examples(*arrays)
            for split, arrays in splits.items()}

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {'image': image, 'label': int(label)}

  def _source_paths(self, dl_manager) -> dict[str, str]:
    """Returns {file name: path}: the local files, else downloaded copies."""
    names = [name for pair in FILES.values() for name in pair]
    local = {name: os.path.join(self._source_dir, name) for name in names}
    missing = [path for path in local.values() if not os.path.isfile(path)]
    if not missing:
      return local
    try:
      # A quick probe: offline, tfds's retries take minutes to give up.
      requests.head(URL + names[0], timeout=_PROBE_TIMEOUT).raise_for_status()
      return dl_manager.download({name: URL + name for name in names})
    # requests raises OSErrors; tfds raises DownloadError on a bad HTTP code.
    except (OSError, tfds.download.DownloadError) as e:
      raise DataError(
          f'Fashion-MNIST not found in {self._source_dir} (no {missing[0]}) '
          f'and could not be downloaded ({type(e).__name__}): install it with '
          '`apt-get install dataset-fashion-mnist`, or give '
          '--config.source_dir=DIR holding the four *-ubyte.gz files, or '
          'allow network access.') from e


def get_builder(data_dir=None, source_dir=DEFAULT_SOURCE_DIR,
                verify_checksums=True) -> FashionMnistIdx:
  """Returns the builder, preparing the dataset into `data_dir` on first use.

  Args:
    data_dir: tfds data directory; '' or None means tfds's default.
    source_dir: directory holding the four `*-ubyte.gz` IDX files.
    verify_checksums: check the files are the real Fashion-MNIST.

  Raises:
    DataError: the files are missing and cannot be downloaded, or are bad.
  """
  builder = FashionMnistIdx(data_dir=data_dir or None, source_dir=source_dir,
                            verify_checksums=verify_checksums)
  builder.download_and_prepare()  # Returns at once if already prepared.
  return builder


def load(data_dir: str, *, source_dir: str = DEFAULT_SOURCE_DIR,
         verify_checksums: bool = True) -> Dataset:
  """Both splits in host memory, preparing the dataset into `data_dir` on first use.

  The arguments are `get_builder`'s. With several processes, process 0
  prepares first, so hosts sharing a data_dir never write it twice.
  """
  if jax.process_count() > 1:
    if jax.process_index() == 0:
      get_builder(data_dir, source_dir, verify_checksums)
    multihost_utils.sync_global_devices('fashion_mnist_idx prepared')
  builder = get_builder(data_dir, source_dir, verify_checksums)
  return Dataset({split: input_pipeline.read_source(builder.as_data_source(split))
                  for split in FILES}, CLASS_NAMES)
