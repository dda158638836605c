"""Layers every ACT model shares: He-initialised convolutions, BatchNorm with PyTorch's defaults.

No model normalises its input: ACT's threat model (epsilon-balls, clipping to [0, 1]) is defined
in raw pixel space, and the release feeds [0, 1] images straight into the network (ACT spec).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

# He normal over fan_out: what torchvision and the TRADES WideResNet use for convolutions.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(features: int, kernel: int, stride: int, dtype: jnp.dtype) -> nn.Conv:
  """A bias-free convolution (every conv feeds a BatchNorm) padded by kernel // 2 like PyTorch.

  Explicit symmetric padding rather than 'SAME': for stride 2 on even inputs 'SAME' pads only
  on the bottom/right, which would shift every strided layer against the PyTorch reference.
  """
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=conv_kernel_init)


def batch_norm(train: bool, dtype: jnp.dtype, axis_name: str | None, **kwargs) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults (flax momentum 0.9 == torch momentum 0.1, eps 1e-5).

  The forward pass matches torch's in both modes. One difference remains in the running
  variance: flax averages in the biased batch variance, torch the unbiased one (larger by
  n / (n - 1) for n values per channel), a small effect that the PyTorch parity test accounts for.
  `axis_name` is the data-parallel axis ("data") when statistics are synchronised across
  devices, None for per-device statistics as under the release's plain DDP.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      param_dtype=jnp.float32, axis_name=axis_name, **kwargs)


REPRESENTATIONS = "intermediates"  # the collection that `Classifier.representation` sows into


class Classifier(nn.Module):
  """The fields of every ACT classifier.

  `width` is the architecture's base width (the paper's unless a config sets
  `model.base_width`); `bn_axis_name` is the data-parallel axis that BatchNorm statistics are
  synchronised over, or None for per-device statistics.

  Each model marks its layers' representations with `representation`, for the analysis tools
  (`act_jax.analysis.representations`): applied with `mutable=["intermediates"]` a model
  returns them; otherwise sowing does nothing and the computation is unchanged.
  """
  num_classes: int
  width: int = 64
  dtype: jnp.dtype = jnp.float32
  bn_axis_name: str | None = None

  def representation(self, name: str, x: jax.Array) -> jax.Array:
    """Marks `x` as the representation called `name`; returns it unchanged."""
    self.sow(REPRESENTATIONS, name, x)
    return x

  def head(self, x: jax.Array) -> jax.Array:
    """Global average pool (the penultimate representation) and a linear layer, with logits
    cast to float32: exact softmax arithmetic in the losses whatever the compute dtype."""
    x = self.representation("penultimate", jnp.mean(x, axis=(1, 2)))
    return nn.Dense(self.num_classes, dtype=self.dtype,
                    param_dtype=jnp.float32)(x).astype(jnp.float32)

  def conv_bn_relu(self, x: jax.Array, features: int, kernel: int, stride: int,
                   train: bool) -> jax.Array:
    """conv-BN-ReLU inside the caller's compact `__call__` (stems and plain conv layers)."""
    x = conv(features, kernel, stride, self.dtype)(x)
    return nn.relu(batch_norm(train, self.dtype, self.bn_axis_name)(x))
