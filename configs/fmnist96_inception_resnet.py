"""GoogLeNet with residual Inception blocks (Inception-ResNet, Szegedy et al., 2017).

Accuracy: not measured.

  python main.py --config=configs/fmnist96_inception_resnet.py \
      --workdir=workdir/fmnist96_inception_resnet
"""

import ml_collections

from configs import fmnist96


def get_config() -> ml_collections.ConfigDict:
  """fmnist96 with scaled residual Inception blocks and BatchNorm."""
  config = fmnist96.get_config()
  config.model = 'inception_resnet'  # Branches -> 1x1 projection -> 0.2 x residual.
  config.learning_rate = 0.1  # 10x the chapter's, as BatchNorm allows (not tried here).
  config.momentum = 0.9  # Momentum SGD.
  return config
