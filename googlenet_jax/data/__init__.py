"""The datasets, as a table: `config.dataset` names a row of `DATASETS`.

A new dataset is one file in this folder, whose `load` returns a
`dataset.Dataset`, and one row below.
"""

from googlenet_jax.data import fashion_mnist
from googlenet_jax.data.dataset import Dataset, DatasetSpec

DATASETS = {
    'fashion_mnist': DatasetSpec(
        load=fashion_mnist.load, image_shape=fashion_mnist.IMAGE_SHAPE,
        options=('source_dir', 'verify_checksums')),
}
