"""act_jax's models in plain PyTorch, and weights converted between the two frameworks.

Written independently, layer for layer, from `act_jax.models`, so that a benchmark compares the
same computation in both frameworks (`act_jax.pytorch.act_step`) and parity tests check that
they agree number for number. Models take NCHW float images in [0, 1] (PyTorch's layout; the
act_jax models take NHWC) and return float32 logits. Every layer that act_jax creates has a
counterpart here, listed by `flax_layout()` under its flax module path, which is all the weight
converters need.

BatchNorm is stock `nn.BatchNorm2d` (eps 1e-5, torch momentum 0.1 == flax momentum 0.9), as in
the ACT release. Both frameworks normalise a training batch with its biased variance, but the
running variance they store differs: flax averages in the biased batch variance, PyTorch the
unbiased one (times n / (n - 1), n = images x height x width per channel). Only the running
statistics after a train-mode pass differ, by that factor on the new term; converters copy the
stored values unchanged, and the parity test compares the update with the factor applied.
"""

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ACT_INIT_STD = 0.001
BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # torch convention: new = (1 - 0.1) * old + 0.1 * batch; flax momentum 0.9

# Flax variables of one model: {"Conv_0": {"kernel": ...}, "BasicBlock_0": {...}, ...}.
FlaxTree = Mapping[str, Any]


# Layers: bias-free convs padded like the act_jax `conv`, PyTorch-default BatchNorm.


def conv(in_channels: int, out_channels: int, kernel: int, stride: int) -> nn.Conv2d:
  """Bias-free conv with symmetric kernel // 2 padding, as act_jax's explicit-padding `conv`."""
  return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2,
                   bias=False)


def batch_norm(channels: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def init_weights(module: nn.Module) -> None:
  """He normal (fan_out) convs as act_jax; LeCun-scaled normal dense layers with zero bias.

  Only for training from scratch: parity runs overwrite every weight with the flax values.
  """
  for layer in module.modules():
    if isinstance(layer, nn.Conv2d):
      nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(layer, nn.Linear):
      nn.init.normal_(layer.weight, std=layer.in_features**-0.5)
      nn.init.zeros_(layer.bias)


def prefixed(prefix: str, layout: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
  return {f"{prefix}/{name}": layer for name, layer in layout.items()}


# Models.


class SmallCNN(nn.Module):
  """act_jax.models.small_cnn.SmallCNN: [conv3x3-BN-ReLU x2, max-pool 2] at widths w and 2w,
  Dense(8w)-ReLU, Dense head.

  The flax model flattens NHWC features before its first dense layer, so this one permutes to
  NHWC before flattening: the dense weights then convert by a plain transpose. Unlike flax,
  torch sizes that layer at construction, hence `image_size` (square images).
  """

  def __init__(self, num_classes: int, width: int = 32, in_channels: int = 1,
               image_size: int = 28):
    super().__init__()
    channels = [in_channels, width, width, 2 * width, 2 * width]
    self.convs = nn.ModuleList(conv(channels[i], channels[i + 1], 3, 1) for i in range(4))
    self.bns = nn.ModuleList(batch_norm(channels[i + 1]) for i in range(4))
    spatial = image_size // 2 // 2
    self.hidden = nn.Linear(2 * width * spatial * spatial, 8 * width)
    self.head = nn.Linear(8 * width, num_classes)
    init_weights(self)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    for index, (conv_layer, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
      x = F.relu(bn(conv_layer(x)))
      if index % 2 == 1:
        x = F.max_pool2d(x, 2, 2)  # floor mode drops an odd last row/column, as act_jax
    x = x.permute(0, 2, 3, 1).flatten(1)
    return self.head(F.relu(self.hidden(x))).float()

  def flax_layout(self) -> dict[str, nn.Module]:
    layout = {f"Conv_{i}": layer for i, layer in enumerate(self.convs)}
    layout.update({f"BatchNorm_{i}": layer for i, layer in enumerate(self.bns)})
    layout.update({"Dense_0": self.hidden, "Dense_1": self.head})
    return layout


class Shortcut(nn.Module):
  """Identity, or a strided 1x1 conv + BN projection where the shape changes (act_jax)."""

  def __init__(self, in_channels: int, out_channels: int, stride: int):
    super().__init__()
    self.project = stride != 1 or in_channels != out_channels
    if self.project:
      self.conv = conv(in_channels, out_channels, 1, stride)
      self.bn = batch_norm(out_channels)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.bn(self.conv(x)) if self.project else x


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN, add the shortcut, ReLU (act_jax.models.blocks.BasicBlock)."""
  expansion = 1

  def __init__(self, in_channels: int, features: int, stride: int):
    super().__init__()
    self.conv1, self.bn1 = conv(in_channels, features, 3, stride), batch_norm(features)
    self.conv2, self.bn2 = conv(features, features, 3, 1), batch_norm(features)
    self.shortcut = Shortcut(in_channels, features, stride)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = F.relu(self.bn1(self.conv1(x)))
    return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))

  def flax_layout(self) -> dict[str, nn.Module]:
    layout = {"Conv_0": self.conv1, "BatchNorm_0": self.bn1, "Conv_1": self.conv2,
              "BatchNorm_1": self.bn2}
    if self.shortcut.project:
      layout.update({"Conv_2": self.shortcut.conv, "BatchNorm_2": self.shortcut.bn})
    return layout


class Bottleneck(nn.Module):
  """1x1-3x3-1x1 convs, expansion 4, stride on the 3x3 conv (act_jax.models.blocks.Bottleneck)."""
  expansion = 4

  def __init__(self, in_channels: int, features: int, stride: int,
               zero_init_last_bn: bool = False):
    super().__init__()
    out_channels = self.expansion * features
    self.conv1, self.bn1 = conv(in_channels, features, 1, 1), batch_norm(features)
    self.conv2, self.bn2 = conv(features, features, 3, stride), batch_norm(features)
    self.conv3, self.bn3 = conv(features, out_channels, 1, 1), batch_norm(out_channels)
    if zero_init_last_bn:
      nn.init.zeros_(self.bn3.weight)
    self.shortcut = Shortcut(in_channels, out_channels, stride)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    return F.relu(self.bn3(self.conv3(y)) + self.shortcut(x))

  def flax_layout(self) -> dict[str, nn.Module]:
    layout = {"Conv_0": self.conv1, "BatchNorm_0": self.bn1, "Conv_1": self.conv2,
              "BatchNorm_1": self.bn2, "Conv_2": self.conv3, "BatchNorm_2": self.bn3}
    if self.shortcut.project:
      layout.update({"Conv_3": self.shortcut.conv, "BatchNorm_3": self.shortcut.bn})
    return layout


def residual_stages(block: type, stage_sizes: Sequence[int], width: int, in_channels: int,
                    **block_kwargs: Any) -> nn.Sequential:
  """Stages of widths w, 2w, 4w, 8w; the first block of stages 2-4 downsamples by 2."""
  blocks = []
  for stage, num_blocks in enumerate(stage_sizes):
    for index in range(num_blocks):
      stride = 2 if stage > 0 and index == 0 else 1
      blocks.append(block(in_channels, width * 2**stage, stride, **block_kwargs))
      in_channels = width * 2**stage * block.expansion
  return nn.Sequential(*blocks)


class ResNetBase(nn.Module):
  """Stem, residual blocks, global average pool, linear; subclasses build the stem."""
  stem_pool: bool = False

  def _build(self, stem: nn.Conv2d, block: type, stage_sizes: Sequence[int], num_classes: int,
             width: int, **block_kwargs: Any) -> None:
    self.stem_conv, self.stem_bn = stem, batch_norm(width)
    self.blocks = residual_stages(block, stage_sizes, width, width, **block_kwargs)
    self.head = nn.Linear(width * 2**(len(stage_sizes) - 1) * block.expansion, num_classes)
    self.block_name = block.__name__

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.stem_bn(self.stem_conv(x)))
    if self.stem_pool:
      x = F.max_pool2d(x, 3, 2, padding=1)
    x = self.blocks(x)
    return self.head(x.mean(dim=(2, 3))).float()

  def flax_layout(self) -> dict[str, nn.Module]:
    layout = {"Conv_0": self.stem_conv, "BatchNorm_0": self.stem_bn, "Dense_0": self.head}
    for index, block in enumerate(self.blocks):
      layout.update(prefixed(f"{self.block_name}_{index}", block.flax_layout()))
    return layout


class CifarResNet(ResNetBase):
  """act_jax.models.resnet_cifar.CifarResNet: stride-1 3x3 stem, no max-pool."""

  def __init__(self, block: type, stage_sizes: Sequence[int], num_classes: int, width: int = 64,
               in_channels: int = 3):
    super().__init__()
    self._build(conv(in_channels, width, 3, 1), block, stage_sizes, num_classes, width)
    init_weights(self)


class ResNet18Cifar(CifarResNet):
  """ResNet-18 with the CIFAR stem (the "resnet18_cifar" of act_jax.models)."""

  def __init__(self, num_classes: int, width: int = 64, in_channels: int = 3):
    super().__init__(BasicBlock, (2, 2, 2, 2), num_classes, width, in_channels)


class ResNet50ImageNet(ResNetBase):
  """act_jax.models.resnet_imagenet.ImageNetResNet50: 7x7/2 stem, 3x3/2 max-pool, bottlenecks
  [3, 4, 6, 3] (v1.5), last BN scale of every block zero-initialised."""
  stem_pool = True

  def __init__(self, num_classes: int, width: int = 64, in_channels: int = 3):
    super().__init__()
    self._build(conv(in_channels, width, 7, 2), Bottleneck, (3, 4, 6, 3), num_classes, width,
                zero_init_last_bn=True)
    init_weights(self)


class ResNet34Cifar(CifarResNet):
  """ResNet-34 with the CIFAR stem (the "resnet34_cifar" of act_jax.models)."""

  def __init__(self, num_classes: int, width: int = 64, in_channels: int = 3):
    super().__init__(BasicBlock, (3, 4, 6, 3), num_classes, width, in_channels)


class ResNet50Cifar(CifarResNet):
  """ResNet-50 (v1.5 bottlenecks, last BN scale one) with the CIFAR stem ("resnet50_cifar")."""

  def __init__(self, num_classes: int, width: int = 64, in_channels: int = 3):
    super().__init__(Bottleneck, (3, 4, 6, 3), num_classes, width, in_channels)


class PreActBlock(nn.Module):
  """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the input, or plus a strided 1x1 conv of the
  pre-activated input where the width changes (act_jax.models.wide_resnet.PreActBlock, TRADES).
  """

  def __init__(self, in_channels: int, features: int, stride: int):
    super().__init__()
    self.bn1, self.conv1 = batch_norm(in_channels), conv(in_channels, features, 3, stride)
    self.bn2, self.conv2 = batch_norm(features), conv(features, features, 3, 1)
    # act_jax tests the widths only: where they agree the stride is always 1.
    self.shortcut = conv(in_channels, features, 1, stride) if in_channels != features else None

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    pre = F.relu(self.bn1(x))
    y = self.conv2(F.relu(self.bn2(self.conv1(pre))))
    return (x if self.shortcut is None else self.shortcut(pre)) + y

  def flax_layout(self) -> dict[str, nn.Module]:
    layout = {"BatchNorm_0": self.bn1, "Conv_0": self.conv1, "BatchNorm_1": self.bn2,
              "Conv_1": self.conv2}
    if self.shortcut is not None:
      layout["Conv_2"] = self.shortcut
    return layout


class WideResNet(nn.Module):
  """act_jax.models.wide_resnet.WideResNet: conv3x3(w), three stages of (depth - 4) / 6
  pre-activation blocks at widths wk, 2wk, 4wk, BN-ReLU, global average pool, linear.

  `width` is the stem width (16 in the paper) that the widen factor k multiplies.
  """

  def __init__(self, num_classes: int, width: int = 16, depth: int = 28, widen_factor: int = 10,
               in_channels: int = 3):
    super().__init__()
    self.stem_conv = conv(in_channels, width, 3, 1)
    blocks, channels = [], width
    for stage in range(3):
      for index in range((depth - 4) // 6):
        stride = 2 if stage > 0 and index == 0 else 1
        features = width * widen_factor * 2**stage
        blocks.append(PreActBlock(channels, features, stride))
        channels = features
    self.blocks = nn.Sequential(*blocks)
    self.final_bn = batch_norm(channels)
    self.head = nn.Linear(channels, num_classes)
    init_weights(self)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.blocks(self.stem_conv(x))
    return self.head(F.relu(self.final_bn(x)).mean(dim=(2, 3))).float()

  def flax_layout(self) -> dict[str, nn.Module]:
    layout = {"Conv_0": self.stem_conv, "BatchNorm_0": self.final_bn, "Dense_0": self.head}
    for index, block in enumerate(self.blocks):
      layout.update(prefixed(f"PreActBlock_{index}", block.flax_layout()))
    return layout


MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "resnet18_cifar": ResNet18Cifar,
    "resnet34_cifar": ResNet34Cifar,
    "resnet50_cifar": ResNet50Cifar,
    "wrn28_10": functools.partial(WideResNet, depth=28, widen_factor=10),
    "wrn34_10": functools.partial(WideResNet, depth=34, widen_factor=10),
    "resnet50_imagenet": ResNet50ImageNet,
}


def build_model(name: str, *, num_classes: int, base_width: int | None = None,
                **kwargs: Any) -> nn.Module:
  """The torch model of act_jax's `build_model(name, ...)`: every name act_jax defines.

  `kwargs` go to the model's constructor: `in_channels` (default 3; 1 for Fashion-MNIST),
  `image_size` for small_cnn (which sizes its dense layer at construction), `depth` and
  `widen_factor` for the WRNs (tests build shallow ones).
  """
  if name not in MODELS:
    raise ValueError(f"no torch model {name!r}; available: {', '.join(MODELS)}")
  width = {} if base_width is None else {"width": base_width}
  return MODELS[name](num_classes=num_classes, **width, **kwargs)


# Weight conversion between flax variables and torch modules.


def _flax_leaf(tree: FlaxTree, path: str) -> FlaxTree:
  for name in path.split("/"):
    tree = tree[name]
  return tree


def _tensor(value: Any) -> torch.Tensor:
  return torch.from_numpy(np.array(value, dtype=np.float32))


def _flax_module_paths(tree: FlaxTree, path: str = "") -> set[str]:
  """Paths ("BasicBlock_0/Conv_1") of the flax modules that hold arrays directly."""
  paths = set()
  for name, value in tree.items():
    if isinstance(value, Mapping):
      paths |= _flax_module_paths(value, f"{path}/{name}" if path else name)
    else:
      paths.add(path)
  return paths


def flax_to_torch_state_dict(model: nn.Module, params: FlaxTree,
                             batch_stats: FlaxTree) -> dict[str, torch.Tensor]:
  """The state_dict of `model` holding act_jax's `params` and `batch_stats` for the same model.

  Conv kernels HWIO -> OIHW, dense kernels (in, out) -> (out, in), BN scale/bias -> weight/bias,
  BN mean/var -> running_mean/running_var (copied as stored; see the module docstring).
  Raises if the flax tree and the torch model do not hold the same layers.
  """
  layout = model.flax_layout()
  missing = _flax_module_paths(params) ^ set(layout)
  if missing:
    raise ValueError(f"flax and torch layers differ: {sorted(missing)}")
  names = {id(module): name for name, module in model.named_modules()}
  state = dict(model.state_dict())
  for path, layer in layout.items():
    prefix, variables = names[id(layer)], _flax_leaf(params, path)
    if isinstance(layer, nn.Conv2d):
      state[f"{prefix}.weight"] = _tensor(variables["kernel"]).permute(3, 2, 0, 1).contiguous()
    elif isinstance(layer, nn.Linear):
      state[f"{prefix}.weight"] = _tensor(variables["kernel"]).t().contiguous()
      state[f"{prefix}.bias"] = _tensor(variables["bias"])
    elif isinstance(layer, nn.BatchNorm2d):
      stats = _flax_leaf(batch_stats, path)
      state[f"{prefix}.weight"] = _tensor(variables["scale"])
      state[f"{prefix}.bias"] = _tensor(variables["bias"])
      state[f"{prefix}.running_mean"] = _tensor(stats["mean"])
      state[f"{prefix}.running_var"] = _tensor(stats["var"])
    else:
      raise TypeError(f"no conversion for {type(layer).__name__} at {path}")
  return state


def load_flax_variables(model: nn.Module, params: FlaxTree, batch_stats: FlaxTree) -> nn.Module:
  """Copies act_jax variables (e.g. a `ModelState`'s params and batch_stats) into `model`."""
  model.load_state_dict(flax_to_torch_state_dict(model, params, batch_stats), strict=True)
  return model


def _set_leaf(tree: dict, path: str, values: dict[str, np.ndarray]) -> None:
  *parents, name = path.split("/")
  for parent in parents:
    tree = tree.setdefault(parent, {})
  tree[name] = values


def torch_to_flax_variables(model: nn.Module) -> tuple[dict, dict]:
  """(params, batch_stats) as nested dicts of NumPy arrays in act_jax's layout: the inverse of
  `flax_to_torch_state_dict`, to compare a torch model with a flax one leaf by leaf."""
  params: dict = {}
  batch_stats: dict = {}
  numpy = lambda t: t.detach().float().cpu().numpy()
  for path, layer in model.flax_layout().items():
    if isinstance(layer, nn.Conv2d):
      _set_leaf(params, path, {"kernel": numpy(layer.weight).transpose(2, 3, 1, 0)})
    elif isinstance(layer, nn.Linear):
      _set_leaf(params, path, {"kernel": numpy(layer.weight).T, "bias": numpy(layer.bias)})
    elif isinstance(layer, nn.BatchNorm2d):
      _set_leaf(params, path, {"scale": numpy(layer.weight), "bias": numpy(layer.bias)})
      _set_leaf(batch_stats, path, {"mean": numpy(layer.running_mean),
                                    "var": numpy(layer.running_var)})
  return params, batch_stats
