"""BatchNorm GoogLeNet at 96x96 with a modern SGD recipe, aiming at >= 94.5%.

Nesterov momentum 0.9, weight decay 5e-4 on the kernels, learning rate 0.1
after a 1-epoch linear warmup, cosine decay to 0 over 30 epochs, label smoothing
0.1. Meant for a GPU or TPU (not run here: on a 2-core CPU it would take days).

  python main.py --config=configs/fmnist96_best.py --workdir=workdir/fmnist96_best
"""

import ml_collections

from configs import fmnist96


def get_config() -> ml_collections.ConfigDict:
  """fmnist96 with BatchNorm, momentum, weight decay, warmup + cosine, smoothing."""
  config = fmnist96.get_config()
  config.model = 'googlenet_bn'  # BatchNorm after every conv (BN-Inception).
  config.num_epochs = 30  # Long enough for the cosine schedule to anneal.
  config.learning_rate = 0.1  # Peak learning rate, reached after the warmup.
  config.momentum = 0.9  # Heavy-ball momentum ...
  config.nesterov = True  # ... in its Nesterov form.
  config.weight_decay = 5e-4  # L2 on conv and dense kernels.
  config.schedule = 'cosine'  # Linear warmup, then cosine decay to 0.
  config.warmup_epochs = 1.0  # Warmup keeps the first large steps stable.
  config.label_smoothing = 0.1  # The Inception-v3 paper's value.
  return config
