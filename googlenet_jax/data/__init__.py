"""The datasets, as a table: `config.dataset` names a row of `DATASETS`, or any
prepared TFDS image-classification dataset, streamed (tfds_images.py).

A new dataset is one file in this folder, whose `load` returns a
`dataset.Dataset`, and one row below.
"""

import functools

from googlenet_jax.data import fashion_mnist
from googlenet_jax.data import tfds_images
from googlenet_jax.data.dataset import Dataset, DatasetSpec

DATASETS = {
    'fashion_mnist': DatasetSpec(
        load=fashion_mnist.load, image_shape=fashion_mnist.IMAGE_SHAPE,
        options=('source_dir', 'verify_checksums'),
        num_classes=lambda data_dir: len(fashion_mnist.CLASS_NAMES)),
}


def spec(name: str) -> DatasetSpec:
  """The row of `name`, else the prepared TFDS dataset `name`, streamed and cropped."""
  if name in DATASETS:
    return DATASETS[name]
  return DatasetSpec(
      load=functools.partial(tfds_images.load, name), image_shape=None,
      options=('image_size', 'train_split', 'eval_split', 'data_workers'),
      normalization=(tfds_images.IMAGENET_MEAN, tfds_images.IMAGENET_STD), masked=True,
      num_classes=functools.partial(tfds_images.num_classes, name))
