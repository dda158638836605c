"""A small VGG-style CNN for 28x28 Fashion-MNIST, fast enough to train ACT on two CPU cores."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from act_jax.models.common import Classifier


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 stride-2 max-pool as a reshape and a max (odd rows/columns are dropped, as floor mode).

  Same values as `nn.max_pool(x, (2, 2), strides=(2, 2))`, but its gradient is a cheap
  elementwise mask instead of XLA:CPU's slow select-and-scatter: the ACT attack differentiates
  through every pool K times a step, and this made the CPU step about 1.4x faster.
  """
  batch, height, width, channels = x.shape
  x = x[:, :height - height % 2, :width - width % 2]
  return x.reshape(batch, height // 2, 2, width // 2, 2, channels).max(axis=(2, 4))


class SmallCNN(Classifier):
  """[conv3x3-BN-ReLU x2, max-pool 2] at widths w and 2w, a Dense(8w)-ReLU, a Dense head.

  BatchNorm is kept on purpose: ACT's eval-mode attack and train-mode loss only differ for a
  model with BatchNorm, so the small model exercises the same semantics as the ResNets.
  Flattening takes whatever spatial size is left, so any HxW of at least 4x4 works.
  """
  width: int = 32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = x.astype(self.dtype)
    for stage, features in enumerate((self.width, 2 * self.width)):
      for layer in range(2):
        x = self.representation(f"conv{2 * stage + layer}",
                                self.conv_bn_relu(x, features, 3, 1, train))
      x = max_pool_2x2(x)
    x = x.reshape(x.shape[0], -1)
    x = self.representation("penultimate", nn.relu(
        nn.Dense(8 * self.width, dtype=self.dtype, param_dtype=jnp.float32)(x)))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)(x)
    return logits.astype(jnp.float32)
