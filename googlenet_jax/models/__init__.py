"""Models, chosen by name in the config (`config.model`)."""

import functools

from googlenet_jax.models.googlenet import ConvBlock, GoogLeNet, Inception
from googlenet_jax.models.googlenet28 import GoogLeNet28
from googlenet_jax.models.inception_resnet import InceptionResNet, ResidualInception
from googlenet_jax.models.inception_v3 import InceptionV3

MODELS = {
    'googlenet': GoogLeNet,  # The chapter's network.
    'googlenet_bn': functools.partial(GoogLeNet, norm=True),  # BN-Inception.
    # The chapter's network with its first Inception block only: the tests of
    # training's machinery (checkpoints, hosts, faults) compile it in seconds.
    'googlenet_1block': functools.partial(GoogLeNet, num_blocks=1),
    'googlenet28': functools.partial(GoogLeNet28, norm=True),  # Native 28x28.
    'inception_resnet': InceptionResNet,
    'inception_v3': InceptionV3,
}

# Models for the tests alone: no exercise, so --mode=compare leaves them out.
TEST_MODELS = frozenset({'googlenet_1block'})

# The smallest image_size at which every layer of the model still has H, W >= 1
# (checked by summary.smallest_image_size in tests/test_variants.py). Symmetric
# padding makes each stride-2 conv or pool of the GoogLeNets map H to ceil(H/2),
# so even 1x1 runs; Inception-v3's unpadded stem and reductions need 43.
MIN_IMAGE_SIZE = {
    'googlenet': 1,
    'googlenet_bn': 1,
    'googlenet_1block': 1,
    'googlenet28': 1,
    'inception_resnet': 1,
    'inception_v3': 43,
}
