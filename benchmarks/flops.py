"""Model FLOPs counted from the program itself: every convolution and matrix product in the jaxpr.

MFU needs the FLOPs a step must do, whatever the backend does with them. XLA's cost analysis is
not that: on GPU it does not count cuDNN convolutions at all (custom calls), and on CPU it
counts only the kernel taps that fall inside the image, so it reports less than the usual
figures wherever convolutions pad (13% less for the CIFAR ResNet-18, whose last stage is 4x4).
This count is the convention of the published figures: 2 FLOPs per multiply-accumulate of
every convolution (padding included) and matrix product. Elementwise work (BatchNorm,
activations) is left out, as there.
"""

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core


def _conv_flops(equation: Any) -> int:
  """2 x (output elements) x (multiply-accumulates per output element)."""
  params = equation.params
  rhs = equation.invars[1].aval.shape
  output = equation.outvars[0].aval.shape
  dimensions = params["dimension_numbers"]
  kernel_in = rhs[dimensions.rhs_spec[1]]
  kernel_spatial = math.prod(rhs[i] for i in dimensions.rhs_spec[2:])
  return 2 * math.prod(output) * kernel_in * kernel_spatial


def _dot_flops(equation: Any) -> int:
  """2 x (output elements) x (contracted size)."""
  (lhs_contract, _), _ = equation.params["dimension_numbers"]
  lhs = equation.invars[0].aval.shape
  output = equation.outvars[0].aval.shape
  return 2 * math.prod(output) * math.prod(lhs[i] for i in lhs_contract)


_COUNTERS = {"conv_general_dilated": _conv_flops, "dot_general": _dot_flops}


def _subjaxprs(equation: Any):
  for value in equation.params.values():
    for item in value if isinstance(value, (list, tuple)) else (value,):
      if isinstance(item, jax_core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jax_core.Jaxpr):
        yield item


def jaxpr_flops(jaxpr: Any) -> int:
  """The FLOPs of the convolutions and matrix products of `jaxpr`, nested calls included.

  Loops are not multiplied out (forward passes have none); a loop body counts once.
  """
  total = 0
  for equation in jaxpr.eqns:
    counter = _COUNTERS.get(equation.primitive.name)
    if counter is not None:
      total += counter(equation)
    for inner in _subjaxprs(equation):
      total += jaxpr_flops(inner)
  return total


def forward_flops_per_image(apply_fn: Callable[..., jax.Array], variables: Any,
                            image_shape: tuple[int, int, int], batch_size: int = 2) -> float:
  """FLOPs of one forward pass per image of `apply_fn(variables, images)`, from shapes alone."""
  images = jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.float32)
  closed = jax.make_jaxpr(apply_fn)(variables, images)
  return jaxpr_flops(closed.jaxpr) / batch_size
