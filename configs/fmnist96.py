"""The chapter's recipe: GoogLeNet on Fashion-MNIST resized to 96x96.

Plain SGD at learning rate 0.01, batch 128, 10 epochs: 84.52% test accuracy on a
2-core CPU, 2026-11-30 (the README's Accuracy table, docs/fmnist96/README.md).

  python main.py --config=configs/fmnist96.py --workdir=workdir/fmnist96

A quick CPU check (a few steps at a small image size):

  python main.py --config=configs/fmnist96.py --workdir=/tmp/w \
      --config.num_train_steps=5 --config.image_size=32
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """The chapter's hyperparameters; every field can be overridden on the command line."""
  config = ml_collections.ConfigDict()
  config.model = 'googlenet'  # Model name, see googlenet_jax/models/__init__.py.
  config.num_classes = 0  # Outputs of the head; 0 = the dataset's classes (10 here).
  config.image_size = 96  # Images are resized (bilinear, on the device) to this size.
  config.conv_lowering = 'auto'  # CPU form (convs as matmuls): 'auto' (on a CPU), 'matmul', 'xla'.
  config.dtype = 'float32'  # Compute dtype, or 'bfloat16' (GPU/TPU); params stay float32.
  # JAX's persistent compilation cache, shared by every run on the machine; '' = off.
  config.compilation_cache_dir = '~/.cache/googlenet_jax/jax_cache'

  # A dataset of googlenet_jax/data/__init__.py, or any prepared TFDS image
  # classification dataset by name (e.g. imagenet2012), streamed and cropped on the host.
  config.dataset = 'fashion_mnist'
  config.data_dir = ''  # tfds data_dir for the prepared dataset, or gs://; '' = tfds's default.
  config.source_dir = '/usr/share/datasets/fashion-mnist'  # fashion_mnist: the 4 IDX .gz files.
  config.verify_checksums = True  # fashion_mnist: check the IDX files are the real ones.
  config.train_split = 'train'  # TFDS datasets: the split trained on ...
  config.eval_split = 'test'  # ... and the one evaluated (imagenet2012: 'validation').
  config.data_workers = 0  # TFDS datasets: decoding processes per host; 0 = in this one.

  config.seed = 0  # Seeds initialisation and the data order.
  config.batch_size = 128  # Global training batch, split over all devices.
  config.eval_batch_size = 256  # Global evaluation batch; the last one is padded.
  config.num_epochs = 10  # Training length in epochs, used when num_train_steps is -1.
  config.num_train_steps = -1  # A positive value stops training after that many steps.
  config.learning_rate = 0.01  # Learning rate of SGD (the peak one with a schedule).
  config.momentum = 0.0  # SGD momentum; 0 is the chapter's plain SGD.
  config.nesterov = False  # Nesterov momentum (needs momentum > 0).
  config.weight_decay = 0.0  # L2 decay of conv and dense kernels; 0 = none.
  config.schedule = 'constant'  # 'constant' or 'cosine' (linear warmup, cosine to 0).
  config.warmup_epochs = 0.0  # Linear warmup length of the 'cosine' schedule.
  config.label_smoothing = 0.0  # Training targets smoothed towards uniform; 0 = none.
  # On-device augmentation of the 28x28 training images, before resizing.
  config.augment_crop_padding = 0  # Zero-pad by N pixels, then crop 28x28 at random.
  config.augment_flip = False  # Mirror left-right with probability 1/2.
  config.augment_erase_probability = 0.0  # Random erasing (Zhong et al.); 0 = none.

  config.checkpoint_every_steps = 0  # Also checkpoint every N steps; 0 = epoch ends only.
  config.checkpoint_every_minutes = 10.0  # And when this long has passed since the last; 0 = no.
  config.max_checkpoints_to_keep = 3  # Older checkpoints are deleted.
  config.checkpoint_dir = ''  # Eval mode restores from here; '' = WORKDIR/checkpoints.

  config.num_predictions = 18  # Test images drawn by --mode=predict.
  config.predictions_only_mistakes = False  # Draw only misclassified test images.
  return config
