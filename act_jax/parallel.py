"""The only module that knows about devices: the mesh, shardings and the shard_map wrapper.

Every step is written per device with collectives over `DATA_AXIS` and runs here under
`jax.shard_map` inside `jax.jit`: the modern form of `pmap`, and the one code path for one
device, many devices and many hosts alike. State is replicated; batches are split along the
data axis of a one-dimensional mesh over all devices of all processes.
"""

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
REPLICATED = PartitionSpec()
SHARDED = PartitionSpec(DATA_AXIS)


CPU_DEVICE_COUNT_FLAG = "xla_force_host_platform_device_count"
SINGLE_THREADED_DEVICES_FLAG = "--xla_cpu_multi_thread_eigen"
COLLECTIVE_TIMEOUT_FLAG = "--xla_cpu_collective_call_terminate_timeout_seconds"
COLLECTIVE_TIMEOUT_S = 600


def use_one_cpu_device_per_core(batch_sizes: Sequence[int]) -> int | None:
  """Gives XLA:CPU one device per core unless the user chose a count; returns the count set.

  A single XLA:CPU device makes poor use of several cores, while the data-parallel step runs
  each core's share of the batch on its own device: 1.27x faster on 2 cores (benchmarks/
  RESULTS.md). The count is the largest one up to the number of cores that divides every
  batch size in `batch_sizes`. A count chosen through `XLA_FLAGS`
  (--xla_force_host_platform_device_count) or `JAX_NUM_CPU_DEVICES` wins. Must run before JAX
  starts its backends; it only affects the CPU backend, so it is harmless on accelerators.

  With a device on every core, each device also runs single-threaded
  (--xla_cpu_multi_thread_eigen=false): it is as fast, and it keeps one device's intra-op
  threads from holding the cores while that device waits in a collective for the other, a
  deadlock seen here once (an all-reduce rendezvous timed out at the first step). And a device
  may wait up to 10 minutes for the others at a collective, where XLA:CPU aborts the process
  after 40 s: on a machine busy with other work, a 30-epoch run was killed that way after 49
  minutes, its two devices starved of CPU, not deadlocked.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if CPU_DEVICE_COUNT_FLAG in flags or os.environ.get("JAX_NUM_CPU_DEVICES"):
    return None
  cores = len(os.sched_getaffinity(0))
  count = max(n for n in range(1, cores + 1) if all(size % n == 0 for size in batch_sizes))
  jax.config.update("jax_num_cpu_devices", count)
  if count == cores > 1 and SINGLE_THREADED_DEVICES_FLAG not in flags:
    flags = f"{flags} {SINGLE_THREADED_DEVICES_FLAG}=false"
  if count > 1 and COLLECTIVE_TIMEOUT_FLAG not in flags:
    flags = f"{flags} {COLLECTIVE_TIMEOUT_FLAG}={COLLECTIVE_TIMEOUT_S}"
  os.environ["XLA_FLAGS"] = flags.strip()
  return count


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D data-parallel mesh over `devices` (default: every device of every process)."""
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), (DATA_AXIS,))


def unrolls_attack_loops(mesh: Mesh) -> bool:
  """Whether attacks on this mesh should unroll their loops: yes on CPU, no elsewhere.

  XLA:CPU runs convolutions inside a While body several times slower than the same convolutions
  in straight-line code (jax-ml/jax#12868); on GPU and TPU the rolled loop is as fast and
  compiles in constant time. See `attacks.parts.unroll_factor` for the measurements.
  """
  return mesh.devices.flat[0].platform == "cpu"


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a tree that is identical on every process on all devices of `mesh`.

  Every leaf goes through host memory. `jax.device_put` of an array already on one local device
  into a sharding that spans several processes builds a malformed array when each process has
  a single device (JAX 0.10): computations accept it, but orbax fails to save it ("An argument
  array had 2 shard(s)").
  """
  sharding = NamedSharding(mesh, REPLICATED)
  return jax.tree.map(lambda leaf: jax.device_put(np.asarray(leaf), sharding), tree)


def device_copier(tree: Any) -> Callable[[Any], Any]:
  """A compiled copy of trees laid out like `tree`, into exactly `tree`'s shardings.

  The copy stays on the devices (no host transfer); stating the output shardings keeps every
  process's copy a well-formed global array, as orbax needs to save it.
  """
  shardings = jax.tree.map(lambda leaf: leaf.sharding, tree)
  return jax.jit(functools.partial(jax.tree.map, jnp.copy), out_shardings=shardings)


def shard_host_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Builds global arrays from each process's local part of the batch, split along the data axis."""
  sharding = NamedSharding(mesh, SHARDED)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def fetch_replicated(tree: Any) -> Any:
  """Host (NumPy) copies of replicated arrays, from this process's first shard of each.

  `jax.device_get` refuses arrays that span other processes' devices; a replicated array
  holds the whole value in every shard, so the local one is enough.
  """
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def fetch_sharded(tree: Any) -> Any:
  """Host (NumPy) copies of whole arrays split along the data axis, on every process."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)


def keys_by_index(key: jax.Array, indices: jax.Array) -> jax.Array:
  """One key per example, `key` folded with the example's index: the same on any device."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)


def example_rngs(rng: jax.Array, step: jax.Array | int, local_batch_size: int) -> jax.Array:
  """Per device: one key per example of this shard, from (rng, step, global example index).

  The global index is the device's position on `DATA_AXIS` times the shard size plus the row,
  so every shard gets its own noise, and the noise of the i-th example of the global batch is
  the same however the batch is split across devices and hosts; no key is ever reused.
  """
  first = jax.lax.axis_index(DATA_AXIS) * local_batch_size
  return keys_by_index(jax.random.fold_in(rng, step), first + jnp.arange(local_batch_size))


def distribute_step(step_fn: Callable, mesh: Mesh, in_specs: tuple, *,
                    donate_state: bool = True) -> Callable:
  """`(state, ...) -> (state, metrics)` compiled over `mesh`, donating the old state.

  `in_specs` says which arguments are replicated and which are split along the data axis.
  `check_vma=False` gives pmap's semantics, which the per-device step is written for: gradients
  are per-device until the step's explicit `lax.pmean`. Donation lets the new state reuse the
  old state's buffers; `donate_state=False` exists only to measure what that saves.
  """
  mapped = jax.shard_map(step_fn, mesh=mesh, in_specs=in_specs,
                         out_specs=(REPLICATED, REPLICATED), check_vma=False)
  return jax.jit(mapped, donate_argnums=0 if donate_state else ())


def distribute_train_step(step_fn: Callable, mesh: Mesh, *, donate_state: bool = True
                          ) -> Callable:
  """`(state, batch, rng) -> (state, metrics)` over `mesh`: the batch split, the rest replicated."""
  return distribute_step(step_fn, mesh, (REPLICATED, SHARDED, REPLICATED),
                         donate_state=donate_state)


def distribute_train_step_with_data(step_fn: Callable, device_batch: Callable, mesh: Mesh
                                    ) -> Callable:
  """`(state, replicated, sharded, rng) -> (state, metrics)` over `mesh`: each device builds its
  shard of the batch with `device_batch(replicated, sharded)` (a gather, an augmentation)
  inside the same compiled program as `step_fn(state, batch, rng)`.

  One program per step also keeps XLA:CPU from interleaving a separate input program with the
  step's collectives on its small thread pool, which deadlocked a 2-device run twice.
  """
  def per_device(state, replicated, sharded, rng):
    return step_fn(state, device_batch(replicated, sharded), rng)

  return distribute_step(per_device, mesh, (REPLICATED, REPLICATED, SHARDED, REPLICATED))


def distribute_per_example(fn: Callable, mesh: Mesh, num_replicated: int) -> Callable:
  """`fn(*replicated, batch) -> per-example values` compiled over `mesh`; nothing is donated.

  The first `num_replicated` arguments are replicated (variables, keys), the last is the batch,
  split along the data axis like the result.
  """
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=(REPLICATED,) * num_replicated + (SHARDED,),
                         out_specs=SHARDED, check_vma=False)
  return jax.jit(mapped)
