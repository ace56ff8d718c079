"""What a row of the datasets table holds, and what its `load` returns."""

import dataclasses
from typing import Callable, Mapping

from googlenet_jax.input_pipeline import ArraySource


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset's splits, 'train' and 'test', with the names of its classes."""
  splits: Mapping[str, ArraySource]
  class_names: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A row of `data.DATASETS`: how to load a dataset, and its shapes without loading it.

  `--mode=compile` and the initial train state take the shapes from here, so
  neither reads the data.
  """
  # load(data_dir, **options) -> Dataset; data_dir '' means tfds's default.
  load: Callable[..., Dataset]
  image_shape: tuple[int, int, int]  # (H, W, C) of each example, uint8, as batched.
  options: tuple[str, ...] = ()  # The config fields `load` takes, by name.

  @property
  def channels(self) -> int:
    return self.image_shape[-1]
