"""The standard ImageNet ResNet-50, for ACT's ImageNet experiments."""

import flax.linen as nn
import jax

from act_jax.models.blocks import Bottleneck, residual_stages
from act_jax.models.common import Classifier


class ImageNetResNet50(Classifier):
  """7x7/2 conv stem, BN, ReLU, 3x3/2 max-pool, bottleneck stages [3, 4, 6, 3], pool, linear.

  Torchvision's resnet50 layout (v1.5: stride on the 3x3 conv), 25.56M parameters at 1000
  classes. The last BN scale of every bottleneck is zero-initialised, so each block starts as
  the identity: the usual large-batch ImageNet recipe (Goyal et al. 2017).
  """

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = self.conv_bn_relu(x.astype(self.dtype), self.width, 7, 2, train)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    x = residual_stages(x, Bottleneck, (3, 4, 6, 3), self.width, train, self.dtype,
                        self.bn_axis_name, zero_init_last_bn=True)
    return self.head(x)
