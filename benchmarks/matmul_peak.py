"""The device's attainable FLOP/s, measured in the same run with one large square matmul.

MFU is reported against this measured peak rather than a datasheet number: a datasheet peak
for "this CPU" does not exist, and on GPUs the sustained clock sets what a matmul reaches.
Both frameworks are measured and the larger figure is the peak for that dtype.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from act_jax import parallel
from benchmarks.timing import time_calls

WARMUP_CALLS = 3
TIMED_CALLS = 10


def jax_matmul_flops_per_second(size: int, dtype: jnp.dtype,
                                devices: Sequence[jax.Device]) -> float:
  """FLOP/s of a (size x size) @ (size x size) product in `dtype` (float32: full precision), one
  on each of `devices` at once: the peak of the devices a data-parallel step runs on. With one
  XLA:CPU device per core each device runs single-threaded (`parallel.
  use_one_cpu_device_per_core`), so one device alone would measure one core, not the machine."""
  sharding = NamedSharding(parallel.make_mesh(list(devices)), parallel.SHARDED)
  keys = jax.random.split(jax.random.PRNGKey(0))
  a, b = (jax.device_put(jax.random.normal(key, (len(devices), size, size), dtype), sharding)
          for key in keys)
  precision = jax.lax.Precision.HIGHEST if dtype == jnp.float32 else jax.lax.Precision.DEFAULT
  matmul = jax.jit(lambda a, b: jnp.einsum("nij,njk->nik", a, b, precision=precision))
  timing = time_calls(lambda: matmul(a, b).block_until_ready(), warmup_calls=WARMUP_CALLS,
                      timed_calls=TIMED_CALLS)
  return len(devices) * 2 * size**3 / timing.median_seconds


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
