"""Every ACT architecture, chosen by name.

All models take NHWC float images in [0, 1] with no normalisation layer (ACT spec), are called
as `model.apply(variables, x, train=...)`, keep float32 params and batch statistics, compute in
`dtype`, and return float32 logits.
"""

import functools

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from act_jax.models.blocks import BasicBlock, Bottleneck
from act_jax.models.resnet_cifar import CifarResNet
from act_jax.models.resnet_imagenet import ImageNetResNet50
from act_jax.models.small_cnn import SmallCNN
from act_jax.models.wide_resnet import WideResNet

_MODELS = {
    "small_cnn": SmallCNN,
    "resnet18_cifar": functools.partial(CifarResNet, block=BasicBlock, stage_sizes=(2, 2, 2, 2)),
    "resnet34_cifar": functools.partial(CifarResNet, block=BasicBlock, stage_sizes=(3, 4, 6, 3)),
    "resnet50_cifar": functools.partial(CifarResNet, block=Bottleneck, stage_sizes=(3, 4, 6, 3)),
    "wrn28_10": functools.partial(WideResNet, depth=28, widen_factor=10),
    "wrn34_10": functools.partial(WideResNet, depth=34, widen_factor=10),
    "resnet50_imagenet": ImageNetResNet50,
}
MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)


def build_model(name: str, *, num_classes: int, dtype: jnp.dtype = jnp.float32,
                bn_axis_name: str | None = None, base_width: int | None = None) -> nn.Module:
  """The named model.

  `bn_axis_name` is the data-parallel axis to synchronise BatchNorm statistics over, or None
  for per-device statistics. `base_width` None keeps the paper width (64 for the ResNets, 16
  before the x10 widen factor for the WRNs, 32 for small_cnn); tests pass a small one.
  """
  if name not in _MODELS:
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
  width = {} if base_width is None else {"width": base_width}
  return _MODELS[name](num_classes=num_classes, dtype=dtype, bn_axis_name=bn_axis_name, **width)


def from_config(config: ml_collections.ConfigDict, num_classes: int, *,
                bn_axis_name: str | None = None) -> nn.Module:
  """The model a run's config describes (`config.model`), for a dataset of `num_classes`."""
  return build_model(config.model.name, num_classes=num_classes,
                     dtype=jnp.dtype(config.model.dtype), bn_axis_name=bn_axis_name,
                     base_width=config.model.base_width)
