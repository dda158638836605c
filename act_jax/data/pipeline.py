"""The input a run consumes, whatever the dataset: training batches by step, evaluation data.

Training and evaluation code see two small interfaces. `TrainData` gives the global batch of a
step, already on the devices and split along the data axis; `EvalData` yields this process's
rows of padded evaluation batches, of a whole split or (where the data is in memory) of any
subset of its examples. Fashion-MNIST, CIFAR and one's own data come from memory (`in_memory`),
ImageNet from tf.data (`tfds_pipeline`); only the latter needs TensorFlow.
"""

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from act_jax import parallel
from act_jax.data import datasets, in_memory
from act_jax.data.catalog import CROP_FLIP_DATASETS, HostBatch, Split


class TrainData(Protocol):
  """The global batch of each step, a pure function of the step.

  `device_batch(replicated, sharded)` builds each device's shard of the batch inside the
  compiled train step, from `step_inputs(step) = (replicated, sharded)`: what every device
  holds, and what is split along the data axis. `parallel.distribute_train_step` composes the
  two with a method's step.
  """
  steps_per_epoch: int

  def step_inputs(self, step: int) -> tuple[Any, Any]: ...

  def device_batch(self, replicated: Any, sharded: Any) -> dict[str, jax.Array]: ...


class StreamedTrainData:
  """ImageNet batches from tf.data, restarted at the asked step when the loop jumps; each
  process reads and sends its own rows, so the device batch is the sharded input itself."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh):
    from act_jax.data import tfds_pipeline
    self._config, self._mesh = config, mesh
    self.steps_per_epoch = tfds_pipeline.imagenet_steps_per_epoch(
        config.dataset.data_dir, global_batch_size=config.train.batch_size,
        process_count=jax.process_count())
    self._iterator: Iterator[HostBatch] | None = None
    self._next_step = -1

  @staticmethod
  def device_batch(replicated: Any, sharded: dict[str, jax.Array]) -> dict[str, jax.Array]:
    del replicated
    return sharded

  def step_inputs(self, step: int) -> tuple[Any, dict[str, jax.Array]]:
    if step != self._next_step:
      from act_jax.data import tfds_pipeline
      self._iterator = tfds_pipeline.imagenet_train_batches(
          per_process_batch_size=self._config.train.batch_size // jax.process_count(),
          seed=self._config.seed, start_step=step, data_dir=self._config.dataset.data_dir,
          image_size=self._config.dataset.image_size, process_index=jax.process_index(),
          process_count=jax.process_count())
    self._next_step = step + 1
    return (), parallel.shard_host_batch(next(self._iterator), self._mesh)


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
  """How many global batches of `config.train.batch_size` an epoch of training takes."""
  if config.dataset.name not in datasets.IN_MEMORY_DATASETS:
    from act_jax.data import tfds_pipeline
    return tfds_pipeline.imagenet_steps_per_epoch(
        config.dataset.data_dir, global_batch_size=config.train.batch_size,
        process_count=jax.process_count())
  return len(datasets.in_memory_split(config.dataset, "train")) // config.train.batch_size


def train_data(config: ml_collections.ConfigDict, mesh: Mesh) -> TrainData:
  """The run's training input: from memory for the small datasets, else from tf.data."""
  if config.dataset.name not in datasets.IN_MEMORY_DATASETS:
    return StreamedTrainData(config, mesh)
  return in_memory.InMemoryTrainData(datasets.in_memory_split(config.dataset, "train"),
                                     global_batch_size=config.train.batch_size, seed=config.seed,
                                     mesh=mesh, augment=config.dataset.name in CROP_FLIP_DATASETS)


@dataclasses.dataclass(frozen=True)
class EvalData:
  """An evaluation split: `batches()` over its examples, `batches(indices)` over a subset.

  `example_indices` are the examples a full pass covers. `supports_subsets` is False for
  streamed data (ImageNet), whose passes always cover every example.
  """
  example_indices: np.ndarray
  supports_subsets: bool
  _batches: Callable[[Sequence[int] | None], Iterator[HostBatch]]

  @property
  def num_examples(self) -> int:
    return len(self.example_indices)

  def batches(self, indices: Sequence[int] | None = None) -> Iterator[HostBatch]:
    if indices is not None and not self.supports_subsets:
      raise ValueError("this dataset is streamed: it evaluates whole passes only")
    return self._batches(self.example_indices if indices is None else indices)


def eval_data(config: ml_collections.ConfigDict, *, split: str = "test",
              num_examples: int | None = None, batch_size: int | None = None) -> EvalData:
  """The first `num_examples` (default: all) of `split` in global batches of `batch_size`
  (default: `config.eval.batch_size`), this process's rows of each."""
  per_process = (batch_size or config.eval.batch_size) // jax.process_count()
  if config.dataset.name not in datasets.IN_MEMORY_DATASETS:
    if split != "test":
      raise ValueError(f"{config.dataset.name} has no hold-out split; eval.split must be test")
    from act_jax.data import tfds_pipeline
    info = tfds_pipeline.imagenet_info(config.dataset.data_dir, config.dataset.image_size)
    count = min(num_examples or info.num_test, info.num_test)
    return EvalData(np.arange(count), False, lambda _: tfds_pipeline.imagenet_eval_batches(
        per_process_batch_size=per_process, num_examples=count,
        data_dir=config.dataset.data_dir, image_size=config.dataset.image_size,
        process_index=jax.process_index(), process_count=jax.process_count()))
  return in_memory_eval_data(datasets.in_memory_split(config.dataset, split),
                             per_process_batch_size=per_process, num_examples=num_examples)


def in_memory_eval_data(split: Split, *, per_process_batch_size: int,
                        num_examples: int | None = None) -> EvalData:
  """Evaluation data over the first `num_examples` of arrays in memory: any dataset's split,
  or images and labels of one's own (uint8 in [0, 255] or float in [0, 1])."""
  count = min(num_examples or len(split), len(split))
  return EvalData(np.arange(count), True, lambda indices: in_memory.eval_batches(
      split, per_process_batch_size=per_process_batch_size, indices=indices,
      process_index=jax.process_index(), process_count=jax.process_count()))
