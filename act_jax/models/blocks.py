"""Post-activation residual blocks shared by the CIFAR and ImageNet ResNets."""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from act_jax.models.common import REPRESENTATIONS, batch_norm, conv


class ResidualBlock(nn.Module):
  """The fields of every residual block: output width, stride, compute dtype, BN axis."""
  features: int
  stride: int
  dtype: jnp.dtype
  bn_axis_name: str | None

  def representation(self, x: jax.Array) -> jax.Array:
    """Marks the block's output as its representation (see `Classifier.representation`)."""
    self.sow(REPRESENTATIONS, "output", x)
    return x


class BasicBlock(ResidualBlock):
  """conv3x3-BN-ReLU-conv3x3-BN, add the shortcut, ReLU (ResNet-18/34)."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    bn = functools.partial(batch_norm, train, self.dtype, self.bn_axis_name)
    y = nn.relu(bn()(conv(self.features, 3, self.stride, self.dtype)(x)))
    y = bn()(conv(self.features, 3, 1, self.dtype)(y))
    return self.representation(nn.relu(y + shortcut(x, self.features, self.stride, self.dtype,
                                                     bn)))


class Bottleneck(ResidualBlock):
  """1x1-3x3-1x1 convs with expansion 4 and the stride on the 3x3 conv (ResNet v1.5).

  The stride sits on the 3x3 conv as in torchvision and kuangliu's CIFAR ResNet-50, rather than
  on the first 1x1 conv (v1), which would discard three quarters of the input activations.
  `zero_init_last_bn` starts each residual branch at zero (Goyal et al. 2017), which helps
  large-batch ImageNet training; the CIFAR ResNet-50 keeps PyTorch's default scale of one.
  """
  zero_init_last_bn: bool = False
  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    bn = functools.partial(batch_norm, train, self.dtype, self.bn_axis_name)
    out_features = self.expansion * self.features
    y = nn.relu(bn()(conv(self.features, 1, 1, self.dtype)(x)))
    y = nn.relu(bn()(conv(self.features, 3, self.stride, self.dtype)(y)))
    last_scale = nn.initializers.zeros if self.zero_init_last_bn else nn.initializers.ones
    y = bn(scale_init=last_scale)(conv(out_features, 1, 1, self.dtype)(y))
    return self.representation(nn.relu(y + shortcut(x, out_features, self.stride, self.dtype,
                                                     bn)))


def shortcut(x: jax.Array, features: int, stride: int, dtype: jnp.dtype,
             bn: functools.partial) -> jax.Array:
  """Identity, or a strided 1x1 conv + BN projection where the shape changes."""
  if stride == 1 and x.shape[-1] == features:
    return x
  return bn()(conv(features, 1, stride, dtype)(x))


def residual_stages(x: jax.Array, block: Any, stage_sizes: Sequence[int], width: int,
                    train: bool, dtype: jnp.dtype, bn_axis_name: str | None,
                    **block_kwargs: Any) -> jax.Array:
  """Four stages of widths w, 2w, 4w, 8w; the first block of stages 2-4 downsamples by 2.

  Called from inside a compact `__call__`, so the blocks become submodules of the caller.
  """
  for stage, num_blocks in enumerate(stage_sizes):
    for index in range(num_blocks):
      stride = 2 if stage > 0 and index == 0 else 1
      x = block(width * 2**stage, stride, dtype, bn_axis_name, **block_kwargs)(x, train)
  return x
