"""The chapter's GoogLeNet with BatchNorm (BN-Inception) on ImageNet at 224x224.

Accuracy: not measured. No line of it has trained: there is no ImageNet and no
TPU here. Its steps have been compiled for v5litepod-8, v6e-8, v5p-8 and h100-8
(docs/tpu.md, docs/gpu.md: memory per chip and XLA's or a roofline's images/s,
estimates, not measurements).

The recipe is flax's examples/imagenet (configs/tpu.py, train.py): SGD with
Nesterov momentum 0.9, 0.1 per 256 images scaled linearly with the batch
(Goyal et al., 2017, "Accurate, Large Minibatch SGD"), 5 epochs of linear
warmup, then cosine decay to 0 over 100 epochs, weight decay 1e-4, bfloat16.
Added from Szegedy et al. (2016, Inception-v3): label smoothing 0.1. The
BatchNorm paper (Ioffe & Szegedy, 2015, section 4.2.1) trained BN-Inception with
momentum SGD at a higher learning rate, a 5x smaller L2 weight and a faster
decay, with no dropout and no local response normalisation; this GoogLeNet has
neither. Its step schedule on 50 replicas is not reproduced here. The host
crops and flips (tfds_images: Inception-style random-resized crop, area
0.08-1; eval resizes and keeps the centre 0.875) and the device normalises with
ImageNet's mean and std, so the on-device augmentation is off.

Batch 1024 is 128 images per chip of a v5litepod-8 (v5e, 16 GB of HBM per
chip), the batch of flax's TPU config.

  python main.py --config=configs/imagenet_googlenet.py --workdir=gs://BUCKET/imagenet_googlenet \
      --config.data_dir=gs://BUCKET/tensorflow_datasets

Before renting the slice, compile it here (no TPU, no data needed):

  python main.py --config=configs/imagenet_googlenet.py --workdir=/tmp/tpu \
      --mode=compile --topology=v5litepod-8
"""

import ml_collections

from configs import fmnist96


def get_config() -> ml_collections.ConfigDict:
  """fmnist96 with BatchNorm, ImageNet at 224, and flax's ImageNet recipe."""
  config = fmnist96.get_config()
  config.model = 'googlenet_bn'  # GoogLeNet, BatchNorm before every ReLU (BN-Inception).
  config.num_classes = 1000  # ImageNet's; set here so --mode=compile needs no data.
  config.image_size = 224  # The host crops to 224x224 RGB; no resize on the device.
  config.dtype = 'bfloat16'  # Compute in bfloat16; parameters stay float32.

  config.dataset = 'imagenet2012'  # Prepared once as array_record (tfds_images.not_prepared).
  config.eval_split = 'validation'  # ImageNet's 50,000 labelled validation images.
  config.data_workers = 16  # Decoding processes per host (not tuned: no TPU VM here).

  config.batch_size = 1024  # 128 per chip on v5litepod-8, as flax's TPU config.
  config.eval_batch_size = 1024  # The last of 49 batches is padded and masked.
  config.num_epochs = 100  # As flax's examples/imagenet.
  config.learning_rate = 0.4  # 0.1 per 256 images, scaled linearly (Goyal et al.).
  config.momentum = 0.9  # flax's examples/imagenet ...
  config.nesterov = True  # ... in its Nesterov form.
  config.weight_decay = 1e-4  # L2 on conv and dense kernels, as flax and Goyal et al.
  config.schedule = 'cosine'  # Linear warmup, then cosine decay to 0.
  config.warmup_epochs = 5.0  # Goyal et al.'s gradual warmup for large batches.
  config.label_smoothing = 0.1  # Inception-v3's value.
  # The host's random-resized crop and flip are the augmentation; none on the device.
  config.augment_crop_padding = 0
  config.augment_flip = False
  config.augment_erase_probability = 0.0
  return config
