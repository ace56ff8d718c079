"""This codebase's Inception-v3 on ImageNet at 299x299, with an SGD recipe.

Accuracy: not measured. No line of it has trained: there is no ImageNet and no
TPU here. Its steps have been compiled for v5litepod-8, v6e-8, v5p-8 and h100-8
(docs/tpu.md, docs/gpu.md: memory per chip and XLA's or a roofline's images/s,
estimates, not measurements).

The model is googlenet_jax/models/inception_v3.py as fmnist96_inception_v3
trains it: the paper's blocks and channels, without the auxiliary classifier,
and without the stem's second 3x3/2 max-pool (dropped for 96x96 inputs). At
299x299 its blocks therefore work on 71x71, 35x35 and 17x17 grids, not the
paper's 35x35, 17x17 and 8x8: 37.7 GFLOPs per image (`--mode=summary`), about
3.3 times the paper's 5.7 billion multiply-adds.

The recipe is the one of configs/imagenet_googlenet.py: flax's
examples/imagenet (SGD, Nesterov momentum 0.9, 0.1 per 256 images scaled
linearly with the batch as Goyal et al., 2017, 5 warmup epochs, cosine decay
over 100 epochs, weight decay 1e-4, bfloat16), with the Inception-v3 paper's
label smoothing 0.1. Not the paper's own (Szegedy et al., 2016, section 8:
RMSProp with decay 0.9 and epsilon 1.0, learning rate 0.045 decayed by 0.94
every two epochs, gradient clipping at 2.0, batches of 32 on 50 replicas): this
codebase's optimizer is SGD alone (train_state.create_optimizer), and that
schedule was tuned for 50 asynchronous replicas, not one synchronous batch.
The host crops to 299x299 (tfds_images: random-resized crop and flip; eval
keeps the centre 0.875), the device normalises with ImageNet's mean and std.

Batch 512 is 64 images per chip of a v5litepod-8, whose train step needs 12.45
GiB of a v5e chip's 15.75 GiB of HBM in bfloat16 (compiled 2026-12-07,
docs/tpu.md); 1024, 128 per chip, was not compiled and would need about twice
the 12.04 GiB of temporaries, unless XLA rematerialised.

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
  """imagenet_googlenet with Inception-v3 at 299x299 and the batch a v5e chip holds."""
  config = imagenet_googlenet.get_config()
  config.model = 'inception_v3'  # Factorised convs, grid reductions, BatchNorm.
  config.image_size = 299  # The paper's; the host crops to 299x299 RGB.
  config.batch_size = 512  # 64 per chip on v5litepod-8.
  config.eval_batch_size = 512  # The last of 98 batches is padded and masked.
  config.learning_rate = 0.2  # 0.1 per 256 images, scaled linearly (Goyal et al.).
  return config
