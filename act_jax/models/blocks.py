"""Post-activation residual blocks shared by the CIFAR and ImageNet ResNets."""

import flax.linen as nn
import jax.numpy as jnp

from act_jax.models.common import batch_norm, conv


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN (+ shortcut) -ReLU; 1x1 conv+BN shortcut when the shape changes."""
  features: int
  stride: int
  dtype: jnp.dtype
  bn_axis_name: str | None
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda **kw: batch_norm(train, self.dtype, self.bn_axis_name, **kw)
    y = nn.relu(bn()(conv(self.features, 3, self.stride, self.dtype)(x)))
    y = bn()(conv(self.features, 3, 1, self.dtype)(y))
    return nn.relu(y + shortcut(x, self.features, self.stride, self.dtype, bn))


class Bottleneck(nn.Module):
  """1x1-3x3-1x1 with expansion 4 and the stride on the 3x3 conv (ResNet v1.5, as torchvision).

  `zero_init_last_bn` starts each residual branch at zero (Goyal et al.), which large-batch
  ImageNet training benefits from; the CIFAR ResNet-50 keeps PyTorch's default (ones).
  """
  features: int
  stride: int
  dtype: jnp.dtype
  bn_axis_name: str | None
  zero_init_last_bn: bool = False
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda **kw: batch_norm(train, self.dtype, self.bn_axis_name, **kw)
    y = nn.relu(bn()(conv(self.features, 1, 1, self.dtype)(x)))
    y = nn.relu(bn()(conv(self.features, 3, self.stride, self.dtype)(y)))
    last_scale = nn.initializers.zeros if self.zero_init_last_bn else nn.initializers.ones
    y = bn(scale_init=last_scale)(conv(4 * self.features, 1, 1, self.dtype)(y))
    return nn.relu(y + shortcut(x, 4 * self.features, self.stride, self.dtype, bn))


def shortcut(x, features: int, stride: int, dtype: jnp.dtype, bn):
  """Identity, or a strided 1x1 conv + BN projection where the shape changes."""
  if stride == 1 and x.shape[-1] == features:
    return x
  return bn()(conv(features, 1, stride, dtype)(x))


def residual_stages(x, block, stage_sizes, width: int, first_stride: int, train: bool,
                    dtype: jnp.dtype, bn_axis_name: str | None, **block_kwargs):
  """Four stages of widths w, 2w, 4w, 8w; the first block of stages 2-4 downsamples by 2."""
  for stage, num_blocks in enumerate(stage_sizes):
    for index in range(num_blocks):
      stride = (first_stride if stage == 0 else 2) if index == 0 else 1
      x = block(width * 2**stage, stride, dtype, bn_axis_name, **block_kwargs)(x, train)
  return x
