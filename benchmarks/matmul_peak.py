"""The device's attainable FLOP/s, measured in the same run with one large square matmul.

MFU is reported against this measured peak rather than a datasheet number: a datasheet peak
for "this CPU" does not exist, and on GPUs the sustained clock sets what a matmul reaches.
Both frameworks are measured and the larger figure is the peak for that dtype.
"""

import jax
import jax.numpy as jnp

from benchmarks.timing import time_calls

WARMUP_CALLS = 3
TIMED_CALLS = 10


def jax_matmul_flops_per_second(size: int, dtype: jnp.dtype, device: jax.Device) -> float:
  """FLOP/s of a (size x size) @ (size x size) product in `dtype` (float32: full precision)."""
  keys = jax.random.split(jax.random.PRNGKey(0))
  a, b = (jax.device_put(jax.random.normal(key, (size, size), dtype), device) for key in keys)
  precision = jax.lax.Precision.HIGHEST if dtype == jnp.float32 else jax.lax.Precision.DEFAULT
  matmul = jax.jit(lambda a, b: jnp.dot(a, b, precision=precision))
  timing = time_calls(lambda: matmul(a, b).block_until_ready(), warmup_calls=WARMUP_CALLS,
                      timed_calls=TIMED_CALLS)
  return 2 * size**3 / timing.median_seconds


def torch_matmul_flops_per_second(size: int, dtype, device) -> float:
  """The same product in PyTorch on `device` (float32: TF32 as the caller set it)."""
  import torch  # optional dependency
  generator = torch.Generator(device="cpu").manual_seed(0)
  a, b = (torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
          for _ in range(2))

  def call():
    torch.mm(a, b)
    if device.type == "cuda":
      torch.cuda.synchronize(device)

  timing = time_calls(call, warmup_calls=WARMUP_CALLS, timed_calls=TIMED_CALLS)
  return 2 * size**3 / timing.median_seconds
