"""The standard ImageNet ResNet-50 (7x7 stride-2 stem and max-pool), v1.5 bottlenecks."""

import flax.linen as nn
import jax.numpy as jnp

from act_jax.models.blocks import Bottleneck, residual_stages
from act_jax.models.common import batch_norm, classifier_head, conv


class ImageNetResNet50(nn.Module):
  num_classes: int
  width: int = 64
  dtype: jnp.dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    x = conv(self.width, 7, 2, self.dtype)(x.astype(self.dtype))
    x = nn.relu(batch_norm(train, self.dtype, self.bn_axis_name)(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    x = residual_stages(x, Bottleneck, (3, 4, 6, 3), self.width, 1, train, self.dtype,
                        self.bn_axis_name, zero_init_last_bn=True)
    return classifier_head(x, self.num_classes, self.dtype)
