"""Pre-activation WideResNet-28-10 / 34-10 as in TRADES' wideresnet.py (Zagoruyko & Komodakis).

The ACT release takes its WRN from TRADES, so this follows TRADES (ACT spec) minus two things:
no dropout (TRADES builds it with dropRate 0), and no unused extra block. The TRADES/ACT code
constructs an extra "1st sub-block" that forward() never calls, a known defect that only
inflates the parameter count and checkpoints; without it WRN-28-10 has the published 36.48M.
"""

import flax.linen as nn
import jax

from act_jax.models.blocks import ResidualBlock
from act_jax.models.common import Classifier, batch_norm, conv


class PreActBlock(ResidualBlock):
  """BN-ReLU-conv3x3-BN-ReLU-conv3x3, plus the input or a 1x1 conv of the pre-activated input.

  As in TRADES, when in != out channels the 1x1 shortcut conv reads the BN-ReLU'd input, not the
  raw input; when in == out the stride is always 1 and the raw input is added.
  """

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    pre = nn.relu(batch_norm(train, self.dtype, self.bn_axis_name)(x))
    y = conv(self.features, 3, self.stride, self.dtype)(pre)
    y = nn.relu(batch_norm(train, self.dtype, self.bn_axis_name)(y))
    y = conv(self.features, 3, 1, self.dtype)(y)
    if x.shape[-1] == self.features:
      return self.representation(x + y)
    return self.representation(conv(self.features, 1, self.stride, self.dtype)(pre) + y)


class WideResNet(Classifier):
  """conv3x3(w), three stages of (depth - 4) / 6 blocks at widths wk, 2wk, 4wk, BN-ReLU, pool.

  `width` is the stem width (16 in the paper) that the widen factor k multiplies.
  """
  width: int = 16
  depth: int = 28
  widen_factor: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    blocks_per_stage = (self.depth - 4) // 6
    x = conv(self.width, 3, 1, self.dtype)(x.astype(self.dtype))
    for stage in range(3):
      for index in range(blocks_per_stage):
        stride = 2 if stage > 0 and index == 0 else 1
        x = PreActBlock(self.width * self.widen_factor * 2**stage, stride, self.dtype,
                        self.bn_axis_name)(x, train)
    x = nn.relu(batch_norm(train, self.dtype, self.bn_axis_name)(x))
    return self.head(x)
