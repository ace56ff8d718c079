"""Inception-v3 blocks (Szegedy et al., 2016), adapted to 96x96, with label smoothing.

Accuracy: not measured.

  python main.py --config=configs/fmnist96_inception_v3.py \
      --workdir=workdir/fmnist96_inception_v3
"""

import ml_collections

from configs import fmnist96


def get_config() -> ml_collections.ConfigDict:
  """fmnist96 with Inception-v3 (BatchNorm throughout) and the paper's smoothing."""
  config = fmnist96.get_config()
  config.model = 'inception_v3'  # Factorised convs, grid reductions, BatchNorm.
  config.learning_rate = 0.1  # 10x the chapter's, as BatchNorm allows (not tried here).
  config.momentum = 0.9  # Momentum SGD, as the paper's baseline.
  config.label_smoothing = 0.1  # The paper's value.
  return config
