"""CIFAR ResNet-18/34/50 as in the ACT release (kuangliu's pytorch-cifar architecture)."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax

from act_jax.models.blocks import BasicBlock, residual_stages
from act_jax.models.common import Classifier


class CifarResNet(Classifier):
  """Stem conv3x3(w)-BN-ReLU, four residual stages, global average pool, linear.

  The stem is a stride-1 3x3 conv with no max-pool (ACT spec, CIFAR stem): on 32x32 inputs the
  ImageNet 7x7/2 stem and pool would leave the last stage only 1x1 pixels to work on.
  """
  block: Any = BasicBlock
  stage_sizes: Sequence[int] = (2, 2, 2, 2)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = self.conv_bn_relu(x.astype(self.dtype), self.width, 3, 1, train)
    x = residual_stages(x, self.block, self.stage_sizes, self.width, train, self.dtype,
                        self.bn_axis_name)
    return self.head(x)
