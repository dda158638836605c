"""Pre-activation WideResNet-28-10 / 34-10 as in TRADES (Zagoruyko & Komodakis 2016).

Unlike the ACT release, the WRN here is built from (depth, widen factor) by keyword, and carries
no unused extra block: the release's extra block received weight decay without ever being used.
"""

import flax.linen as nn
import jax.numpy as jnp

from act_jax.models.common import batch_norm, classifier_head, conv


class PreActBlock(nn.Module):
  """BN-ReLU-conv3x3-BN-ReLU-conv3x3; a 1x1 shortcut conv on the pre-activated input if in != out."""
  features: int
  stride: int
  dtype: jnp.dtype
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, x, train: bool):
    pre = nn.relu(batch_norm(train, self.dtype, self.bn_axis_name)(x))
    y = conv(self.features, 3, self.stride, self.dtype)(pre)
    y = nn.relu(batch_norm(train, self.dtype, self.bn_axis_name)(y))
    y = conv(self.features, 3, 1, self.dtype)(y)
    if x.shape[-1] == self.features:
      return x + y
    return conv(self.features, 1, self.stride, self.dtype)(pre) + y


class WideResNet(nn.Module):
  num_classes: int
  depth: int = 28
  widen_factor: int = 10
  width: int = 16
  dtype: jnp.dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    blocks_per_stage = (self.depth - 4) // 6
    x = conv(self.width, 3, 1, self.dtype)(x.astype(self.dtype))
    for stage in range(3):
      for index in range(blocks_per_stage):
        stride = (1 if stage == 0 else 2) if index == 0 else 1
        x = PreActBlock(self.width * self.widen_factor * 2**stage, stride, self.dtype,
                        self.bn_axis_name)(x, train)
    x = nn.relu(batch_norm(train, self.dtype, self.bn_axis_name)(x))
    return classifier_head(x, self.num_classes, self.dtype)
