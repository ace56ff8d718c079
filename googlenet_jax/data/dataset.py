"""What a row of the datasets table holds, and what its `load` returns."""

import dataclasses
from typing import Callable, Mapping

from googlenet_jax.input_pipeline import Source


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset's splits, 'train' and 'test', with the names of its classes."""
  splits: Mapping[str, Source]
  class_names: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A row of `data.DATASETS`: how to load a dataset, and its shapes without loading it.

  `--mode=compile` and the initial train state take the shapes from here, so
  neither reads the data.
  """
  # load(data_dir, **options) -> Dataset; data_dir '' means tfds's default.
  load: Callable[..., Dataset]
  # (H, W, C) of each example, uint8, as batched; None: cropped on the host to
  # image_size x image_size RGB.
  image_shape: tuple[int, int, int] | None
  options: tuple[str, ...] = ()  # The config fields `load` takes, by name.
  # Per-channel mean and standard deviation in [0, 1] that the steps subtract
  # and divide by, on the device; None: images are scaled to [0, 1] only.
  normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
  # Whether its sources' batches carry 'mask' (a streamed source's: False for an
  # image that cannot be decoded), so a train step compiled ahead of the data
  # takes the input it will be fed.
  masked: bool = False
  # num_classes(data_dir): its number of classes, read without loading it, for
  # config.num_classes 0 ("the dataset's") where the data is not loaded
  # (--mode=compile, summary); None: those modes need --config.num_classes.
  num_classes: Callable[[str], int] | None = None

  def example_shape(self, image_size: int) -> tuple[int, int, int]:
    """(H, W, C) of each example as the host batches it, at config.image_size."""
    return self.image_shape or (image_size, image_size, 3)
