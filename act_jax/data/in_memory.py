"""Small datasets served from memory: shuffled on the host, gathered and augmented on the devices.

Training: the whole training split lives on every device (uint8, or one's own float32 in
[0, 1]). A step's batch is a gather of its example indices, a conversion to [0, 1] and (for
CIFAR) a random crop and flip, compiled into the train step itself; the host computes only the
indices. One program per step also keeps XLA:CPU from interleaving a separate gather program
with the step's collectives on
its small thread pool, which deadlocked a 2-device run twice here (an all-reduce rendezvous that
one device never reached). The order is a pure
function of (seed, step): epoch e is the permutation drawn from (seed, e), and example i of
the global batch of step k is augmented with a key from (seed, k * batch + i). So a resumed
run sees exactly the batches of an uninterrupted one, and any number of devices and hosts sees
the same global batches.

Evaluation: this process's rows of each padded global batch of a split (or of a subset of its
examples), gathered on the host, with the example index and a mask for padding.
"""

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from act_jax import parallel
from act_jax.data.catalog import HostBatch, Split

CIFAR_PADDING = 4
AUGMENTATION_SALT = 0x617567  # folded into the seed, so augmentation and attack keys differ


def unit_interval_images(images: Any) -> Any:
  """`images` (a NumPy or JAX array) as float32 in [0, 1]: uint8 pixels divided by 255, float
  images (one's own data) as they are, since they are in [0, 1] already."""
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255.0
  return images.astype(np.float32)


def cifar_augment(image: jax.Array, key: jax.Array) -> jax.Array:
  """Reflect-pad 4, random crop back to the original size, random horizontal flip (one image).

  The release's CIFAR augmentation (ACT spec, "Training recipes"), for an [H, W, C] image.
  """
  crop_key, flip_key = jax.random.split(key)
  padding = ((CIFAR_PADDING, CIFAR_PADDING), (CIFAR_PADDING, CIFAR_PADDING), (0, 0))
  padded = jnp.pad(image, padding, mode="reflect")
  top, left = jax.random.randint(crop_key, (2,), 0, 2 * CIFAR_PADDING + 1)
  cropped = jax.lax.dynamic_slice(padded, (top, left, 0), image.shape)
  return jnp.where(jax.random.bernoulli(flip_key), cropped[:, ::-1], cropped)


def _device_batch(replicated: tuple[jax.Array, jax.Array, jax.Array],
                  rows: dict[str, jax.Array], *, augment: bool) -> dict[str, jax.Array]:
  """Per device: its shard of the batch, from the replicated (images, labels, augmentation
  key) and its rows' indices."""
  images, labels, key = replicated
  batch_images = unit_interval_images(images[rows["index"]])
  if augment:
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, rows["position"])
    batch_images = jax.vmap(cifar_augment)(batch_images, keys)
  return {"image": batch_images, "label": labels[rows["index"]]}


class InMemoryTrainData:
  """Training batches by step from a split held on every device.

  `indices(step)` is the host's part; the batch itself is gathered (and augmented) on the
  devices by `device_batch`, which the loop compiles into the train step: `step_inputs(step)`
  are its arguments, the replicated split and this step's sharded rows.
  """

  def __init__(self, split: Split, *, global_batch_size: int, seed: int, mesh: Mesh,
               augment: bool):
    if len(split) < global_batch_size:
      raise ValueError(f"{len(split)} training examples, fewer than one batch of "
                       f"{global_batch_size}")
    self.global_batch_size = global_batch_size
    self.steps_per_epoch = len(split) // global_batch_size
    self._num_examples = len(split)
    self._seed = seed
    self._mesh = mesh
    self._replicated = parallel.replicate(
        (split.images, split.labels,
         jax.random.fold_in(jax.random.PRNGKey(seed), AUGMENTATION_SALT)), mesh)
    self._epoch_order: tuple[int, np.ndarray] = (-1, np.empty(0, np.int64))
    self.device_batch = functools.partial(_device_batch, augment=augment)
    self._gather = parallel.distribute_per_example(
        lambda replicated, rows: self.device_batch(replicated, rows), mesh, num_replicated=1)

  def _permutation(self, epoch: int) -> np.ndarray:
    """Epoch `epoch`'s order of the examples, drawn once per epoch."""
    if self._epoch_order[0] != epoch:
      self._epoch_order = (epoch, np.random.default_rng([self._seed, epoch]).permutation(
          self._num_examples))
    return self._epoch_order[1]

  def indices(self, step: int) -> np.ndarray:
    """The example indices of the global batch of `step` (each epoch drops its remainder)."""
    epoch, position = divmod(step, self.steps_per_epoch)
    start = position * self.global_batch_size
    return self._permutation(epoch)[start:start + self.global_batch_size]

  def step_inputs(self, step: int) -> tuple[Any, dict[str, jax.Array]]:
    """(replicated, sharded) arguments of `device_batch` for `step`: the split on every device,
    and this step's example indices and global positions split along the data axis."""
    per_process = self.global_batch_size // jax.process_count()
    rows = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
    positions = step * self.global_batch_size + np.arange(self.global_batch_size)
    local = {"index": self.indices(step)[rows].astype(np.int32),
             "position": positions[rows].astype(np.int32)}
    return self._replicated, parallel.shard_host_batch(local, self._mesh)

  def batch(self, step: int) -> dict[str, jax.Array]:
    """The global batch of `step`, split along the mesh's data axis (for inspection and tests)."""
    return self._gather(*self.step_inputs(step))


def eval_batches(split: Split, *, per_process_batch_size: int, indices: Sequence[int] | None = None,
                 process_index: int = 0, process_count: int = 1) -> Iterator[HostBatch]:
  """This process's rows of each padded global batch over `indices` (default: every example).

  Images come out as float32 in [0, 1]: uint8 ones are divided by 255, float ones kept.

  Batches are padded to full size (mask 0, label 0, black image), so the evaluation compiles
  once, and every process yields the same number of them, so that a collective step never
  waits on a process that has run out. Each example appears in exactly one process's rows,
  and the global batches do not depend on the number of processes.
  """
  indices = np.arange(len(split)) if indices is None else np.asarray(indices, np.int64)
  scale = 1.0 / 255.0 if split.images.dtype == np.uint8 else 1.0
  global_batch = per_process_batch_size * process_count
  num_batches = -(-len(indices) // global_batch)
  padding = num_batches * global_batch - len(indices)
  mask = np.concatenate([np.ones(len(indices), np.float32), np.zeros(padding, np.float32)])
  padded = np.concatenate([indices, np.zeros(padding, np.int64)])
  first = process_index * per_process_batch_size
  for batch in range(num_batches):
    rows = slice(batch * global_batch + first, batch * global_batch + first
                 + per_process_batch_size)
    batch_indices, batch_mask = padded[rows], mask[rows]
    real = batch_mask[:, None, None, None]
    yield {"image": split.images[batch_indices].astype(np.float32) * scale * real,
           "label": np.where(batch_mask > 0, split.labels[batch_indices], 0).astype(np.int32),
           "mask": batch_mask, "index": batch_indices.astype(np.int32)}
