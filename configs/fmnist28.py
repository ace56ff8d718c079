"""GoogLeNet with BatchNorm on native 28x28 Fashion-MNIST: the recipe for a CPU.

The stem is a 3x3/1 conv (googlenet_jax/models/googlenet28.py): no upsampling,
so a step costs less than half of the 96x96 network's. 5 epochs of Nesterov SGD
with warmup, cosine decay and label smoothing: 93.40% test accuracy on a 2-core
CPU in 30 min 39 s, 2026-11-29 (the README's Accuracy table, docs/fmnist28/).

  python main.py --config=configs/fmnist28.py --workdir=workdir/fmnist28
"""

import ml_collections

from configs import fmnist96


def get_config() -> ml_collections.ConfigDict:
  """fmnist96 at 28x28 with BatchNorm, momentum, weight decay and a short schedule."""
  config = fmnist96.get_config()
  config.model = 'googlenet28'  # 3x3/1 stem conv, BatchNorm after every conv.
  config.image_size = 28  # The images as they are: no resizing.
  config.num_epochs = 5  # Short enough for a CPU.
  config.learning_rate = 0.1  # Peak learning rate; BatchNorm keeps it stable.
  config.momentum = 0.9  # Momentum SGD ...
  config.nesterov = True  # ... in its Nesterov form.
  config.weight_decay = 5e-4  # L2 on conv and dense kernels.
  config.schedule = 'cosine'  # Linear warmup, then cosine decay to 0 over the run.
  config.warmup_epochs = 0.2  # A short warmup: the run is short.
  config.label_smoothing = 0.1  # The Inception-v3 paper's value.
  return config
