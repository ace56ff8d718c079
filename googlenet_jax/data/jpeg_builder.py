"""JPEG bytes and labels prepared as a TFDS dataset in array_record, with no TensorFlow.

What `tfds build` makes of an image-classification builder, for images that a
program has as bytes: the features `tfds_images` reads (an Image 'image', a
ClassLabel 'label'), each split's examples in the order given. Afterwards
`tfds.builder(name, data_dir=...)` finds it by name, with no class imported.
"""

from typing import Callable, Iterable, Mapping, Sequence
import io

import tensorflow_datasets as tfds

# Each split's examples, as (JPEG bytes, label index), made when the split is written.
Splits = Mapping[str, Callable[[], Iterable[tuple[bytes, int]]]]


class JpegClassification(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder named at construction: `JpegClassification(name, ...).download_and_prepare()`."""

  VERSION = tfds.core.Version('1.0.0')

  def __init__(self, name: str, class_names: Sequence[str], splits: Splits, **kwargs):
    self.name = name  # The dataset's directory under data_dir, and what finds it.
    self._class_names = tuple(class_names)
    self._splits = splits
    super().__init__(file_format='array_record', **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(names=self._class_names),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True)  # Example i of a split is the i-th given.

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in self._splits}

  def _generate_examples(self, split):
    for i, (data, label) in enumerate(self._splits[split]()):
      yield i, {'image': io.BytesIO(data), 'label': label}


def prepare(name: str, data_dir: str, class_names: Sequence[str], splits: Splits) -> None:
  """Prepares dataset `name` in `data_dir`, as `tfds build` would."""
  JpegClassification(name, class_names, splits, data_dir=data_dir).download_and_prepare()
