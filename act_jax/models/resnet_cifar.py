"""CIFAR ResNet-18/34/50 as in the ACT release (kuangliu's pytorch-cifar architecture)."""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from act_jax.models.blocks import residual_stages
from act_jax.models.common import batch_norm, classifier_head, conv


class CifarResNet(nn.Module):
  """Stem conv3x3(w)-BN-ReLU, four residual stages, global average pool, linear.

  The stem is a stride-1 3x3 conv with no max-pool (ACT spec, CIFAR stem): on 32x32 inputs the
  ImageNet 7x7/2 stem and pool would leave the last stage only 1x1 pixels to work on.
  """
  block: Any
  stage_sizes: Sequence[int]
  num_classes: int
  width: int = 64
  dtype: jnp.dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = conv(self.width, 3, 1, self.dtype)(x.astype(self.dtype))
    x = nn.relu(batch_norm(train, self.dtype, self.bn_axis_name)(x))
    x = residual_stages(x, self.block, self.stage_sizes, self.width, train, self.dtype,
                        self.bn_axis_name)
    return classifier_head(x, self.num_classes, self.dtype)
