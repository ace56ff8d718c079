"""The chapter's recipe with BatchNorm after every conv (BN-Inception, 2015).

Ioffe & Szegedy (2015) train with larger learning rates under BatchNorm: 0.1 here.
Accuracy: not measured yet (a 10-epoch run on a 2-core CPU began on 2026-12-03).

  python main.py --config=configs/fmnist96_bn.py --workdir=workdir/fmnist96_bn
"""

import ml_collections

from configs import fmnist96


def get_config() -> ml_collections.ConfigDict:
  """fmnist96 with the BatchNorm GoogLeNet."""
  config = fmnist96.get_config()
  config.model = 'googlenet_bn'  # GoogLeNet, BatchNorm before every ReLU.
  config.learning_rate = 0.1  # 10x the chapter's, as BatchNorm allows (not yet measured).
  return config
