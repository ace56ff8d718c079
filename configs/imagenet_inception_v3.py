"""Inception-v3 (Szegedy et al., 2016) on ImageNet at the paper's 299x299.

Accuracy: not measured. No line of it has trained: there is no ImageNet and no
TPU here. The network is the paper's ('inception_v3_299': the stem keeps its
second 3x3/2 max-pool, so the blocks work on 35x35, 17x17 and 8x8 grids), without
the auxiliary classifier.

Compiled for v5litepod-8 on 2026-12-07 (jax 0.10.2, libtpu 0.0.42.1, the command
below): the train step takes 4.92 of 15.75 GiB of HBM per chip at batch 1024,
4,155 GFLOP per chip a step (32.5 per training image), and at most 14,567
images/s by a roofline (XLA's bytes at the HBM bandwidth; XLA's cost model gave
a negative time): an estimate, not a measurement. On v6e-8: 4.28 of 31.25 GiB,
at most 27,373 images/s (the same roofline). On v5p-8: 9.87 of 95.74 GiB,
20,373 images/s (XLA's cost model). On h100-8: 7.20 of 59.33 GiB usable, at most
48,840 images/s (a roofline of the compiled kernels' bytes; docs/gpu.md).

The recipe is configs/imagenet_googlenet.py's, flax's examples/imagenet (SGD,
Nesterov momentum 0.9, 0.1 per 256 images scaled linearly with the batch as
Goyal et al., 2017, 5 warmup epochs, cosine decay over 100 epochs, weight decay
1e-4, bfloat16), with the Inception-v3 paper's label smoothing 0.1. Not the
paper's own (section 8: RMSProp with decay 0.9 and epsilon 1.0, learning rate
0.045 decayed by 0.94 every two epochs, gradient clipping at 2.0, batches of 32
on 50 replicas): this codebase's optimizer is SGD alone
(train_state.create_optimizer), and that schedule was tuned for 50 asynchronous
replicas, not one synchronous batch. The host crops to 299x299 (tfds_images:
random-resized crop and flip; eval keeps the centre 0.875), the device
normalises with ImageNet's mean and std.

  python main.py --config=configs/imagenet_inception_v3.py \
      --workdir=gs://BUCKET/imagenet_inception_v3 \
      --config.data_dir=gs://BUCKET/tensorflow_datasets

Before renting the slice, compile it here (no TPU, no data needed):

  python main.py --config=configs/imagenet_inception_v3.py --workdir=/tmp/tpu \
      --mode=compile --topology=v5litepod-8
"""

import ml_collections

from configs import imagenet_googlenet


def get_config() -> ml_collections.ConfigDict:
  """imagenet_googlenet with the paper's Inception-v3 at 299x299."""
  config = imagenet_googlenet.get_config()
  config.model = 'inception_v3_299'  # The paper's stem; factorised convs, BatchNorm.
  config.image_size = 299  # The paper's; the host crops to 299x299 RGB.
  return config
