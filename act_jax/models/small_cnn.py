"""A small VGG-style CNN for 28x28 Fashion-MNIST, fast enough to train ACT on two CPU cores."""

import flax.linen as nn
import jax.numpy as jnp

from act_jax.models.common import batch_norm, conv


class SmallCNN(nn.Module):
  """[conv-BN-ReLU x2, max-pool] at widths w and 2w, then a 8w hidden layer.

  BatchNorm is kept on purpose: ACT's eval-mode attack and train-mode loss only differ for a
  model with BatchNorm, so the small model exercises the same semantics as the ResNets.
  """
  num_classes: int
  width: int = 32
  dtype: jnp.dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    x = x.astype(self.dtype)
    for features in (self.width, 2 * self.width):
      for _ in range(2):
        x = conv(features, 3, 1, self.dtype)(x)
        x = nn.relu(batch_norm(train, self.dtype, self.bn_axis_name)(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(8 * self.width, dtype=self.dtype, param_dtype=jnp.float32)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype,
                    param_dtype=jnp.float32)(x).astype(jnp.float32)
