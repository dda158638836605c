"""CIFAR ResNets as in the ACT release: 3x3 stride-1 stem and no max-pool (ACT spec, recipes)."""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from act_jax.models.blocks import residual_stages
from act_jax.models.common import batch_norm, classifier_head, conv


class CifarResNet(nn.Module):
  """stem conv3x3(w)-BN-ReLU at full 32x32 resolution, four residual stages, pool, linear."""
  block: Any
  stage_sizes: Sequence[int]
  num_classes: int
  width: int = 64
  dtype: jnp.dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    x = conv(self.width, 3, 1, self.dtype)(x.astype(self.dtype))
    x = nn.relu(batch_norm(train, self.dtype, self.bn_axis_name)(x))
    x = residual_stages(x, self.block, self.stage_sizes, self.width, 1, train, self.dtype,
                        self.bn_axis_name)
    return classifier_head(x, self.num_classes, self.dtype)
