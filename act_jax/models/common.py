"""Layers shared by every ACT model: He-initialised convolutions and PyTorch-equivalent BatchNorm."""


import flax.linen as nn
import jax.numpy as jnp

# He normal over fan_out: what torchvision and the TRADES WideResNet use for convolutions.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(features: int, kernel: int, stride: int, dtype: jnp.dtype) -> nn.Conv:
  """A bias-free convolution ('SAME'-style symmetric padding as PyTorch's padding=kernel//2)."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=conv_kernel_init)


def batch_norm(train: bool, dtype: jnp.dtype, axis_name: str | None, **kwargs) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults (flax momentum 0.9 == torch momentum 0.1, eps 1e-5).

  `axis_name` is the data-parallel axis when statistics are synchronised across devices.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      param_dtype=jnp.float32, axis_name=axis_name, **kwargs)


def classifier_head(x, num_classes: int, dtype: jnp.dtype):
  """Global average pool and a float32 linear layer: logits always come out in float32."""
  x = jnp.mean(x, axis=(1, 2))
  return nn.Dense(num_classes, dtype=dtype, param_dtype=jnp.float32)(x).astype(jnp.float32)


