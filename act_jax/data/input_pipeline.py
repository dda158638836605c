"""TFDS input pipelines for ACT: the only module that imports TensorFlow, and only lazily.

TensorFlow and TFDS are imported inside the functions, so that `import act_jax.input_pipeline`
(and anything that only needs the names here) works on a machine without TensorFlow.

Training batches are a pure function of (dataset, seed, step, process, batch size), drawn with
stateless random ops only. So `train_batches(..., start_step=k)` yields exactly what an
uninterrupted iterator yields from step k on, which is how training resumes after preemption
without saving iterator state.

How the processes of a multi-host run share the data depends on the dataset's size:

* ImageNet: each process reads only its own part of every split (`tfds.split_for_jax_process`),
  shuffles it with a seed from (seed, process, epoch) and augments each example with a seed
  from (seed, process, epoch, position).
* Fashion-MNIST and CIFAR (at most ~150 MB decoded): each process holds the split in memory,
  draws the same global permutation from (seed, epoch) and gathers and augments only its own
  rows of every global batch. The global batches, and so the whole run, are then the same for
  any number of processes, and a run restored on a different number of hosts continues the
  very same data stream.
"""

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

DATASET_NAMES = ("fashion_mnist", "cifar10", "cifar100", "imagenet2012")
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
DEFAULT_IMAGENET_SIZE = 224
IMAGENET_SHUFFLE_BUFFER = 16_384  # examples (encoded JPEGs, ~2 GB) mixed across file order
_SMALL_SHAPES = {"fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3), "cifar100": (32, 32, 3)}
_LAST_EPOCH = 2**62  # "forever": the train stream is an endless sequence of epochs
Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and the schedule need to know about a dataset, read from its TFDS metadata.

  `image_shape` is the shape of the images the pipeline yields (after any crop), and `num_test`
  counts the split that `eval_batches` reads by default (ImageNet's labelled "validation").
  """
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  num_train: int
  num_test: int


@functools.cache
def _tf() -> Any:
  """TensorFlow, imported on first use and kept off the GPUs: the accelerators belong to JAX."""
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")
  return tf


def _tfds() -> Any:
  _tf()
  import tensorflow_datasets as tfds
  return tfds


def _check_name(name: str) -> None:
  if name not in DATASET_NAMES:
    raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")


def _image_shape(name: str, image_size: int | None) -> tuple[int, int, int]:
  """ImageNet images are cropped to `image_size`; the small datasets keep their native size."""
  size = image_size or DEFAULT_IMAGENET_SIZE
  return _SMALL_SHAPES.get(name, (size, size, 3))


def _eval_split(name: str, split: str) -> str:
  """ImageNet's TFDS "test" split has no labels, so evaluation reads "validation" instead."""
  return "validation" if name == "imagenet2012" and split == "test" else split


def _fashion_mnist_builder(data_dir: str | None, fashion_mnist_dir: str) -> Any:
  """Local IDX files (no network needed) when present, else TFDS's downloading builder.

  The local dataset is prepared once into `data_dir`; later calls reuse it, even if
  `fashion_mnist_dir` has changed since, so point tests at their own `data_dir`.
  """
  tfds = _tfds()
  from act_jax.data import fashion_mnist_idx  # imports TFDS
  if fashion_mnist_idx.has_idx_files(fashion_mnist_dir):
    builder = fashion_mnist_idx.FashionMnistIdx(data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=fashion_mnist_dir))
    return builder
  logging.warning("No Fashion-MNIST IDX files in %s; asking TFDS to download the dataset "
                  "(`apt-get install dataset-fashion-mnist` to work offline)", fashion_mnist_dir)
  builder = tfds.builder("fashion_mnist", data_dir=data_dir)
  try:
    builder.download_and_prepare()
  except Exception as error:  # network failures surface as many exception types (after ~3 min)
    raise RuntimeError(
        f"Fashion-MNIST: no IDX files in {fashion_mnist_dir} and TFDS could not download it "
        f"({type(error).__name__}); run `apt-get install dataset-fashion-mnist`") from error
  return builder


def _builder(name: str, data_dir: str | None, fashion_mnist_dir: str) -> Any:
  """A prepared TFDS builder (a no-op when the data is already in `data_dir`, e.g. on GCS)."""
  _check_name(name)
  if name == "fashion_mnist":
    return _fashion_mnist_builder(data_dir, fashion_mnist_dir)
  builder = _tfds().builder(name, data_dir=data_dir)
  builder.download_and_prepare()
  return builder


def _num_examples(builder: Any, split: Any) -> int:
  """The size of a (sub)split, from the metadata TFDS attaches to the dataset (reads no data)."""
  count = int(builder.as_dataset(split=split).cardinality())
  if count < 0:
    raise ValueError(f"{builder.name}: the size of split {split} is unknown")
  return count


def _process_split(split: str, process_index: int, process_count: int,
                   drop_remainder: bool) -> Any:
  return _tfds().split_for_jax_process(split, process_index=process_index,
                                       process_count=process_count, drop_remainder=drop_remainder)


def dataset_info(name: str, *, data_dir: str | None = None, image_size: int | None = None,
                 fashion_mnist_dir: str = DEFAULT_FASHION_MNIST_DIR) -> DatasetInfo:
  """Classes, image shape and split sizes of `name`, preparing the dataset if needed."""
  builder = _builder(name, data_dir, fashion_mnist_dir)
  return DatasetInfo(name=name, num_classes=builder.info.features["label"].num_classes,
                     image_shape=_image_shape(name, image_size),
                     num_train=_num_examples(builder, "train"),
                     num_test=_num_examples(builder, _eval_split(name, "test")))


def steps_per_epoch(name: str, *, global_batch_size: int, data_dir: str | None = None,
                    process_count: int = 1,
                    fashion_mnist_dir: str = DEFAULT_FASHION_MNIST_DIR) -> int:
  """Full global batches per epoch, as `train_batches` counts them.

  A small dataset is cut into whole global batches. For ImageNet every process has
  floor(num_train / process_count) examples (the split drops the remainder) and takes whole
  batches of global_batch_size / process_count from them.
  """
  if global_batch_size % process_count:
    raise ValueError(f"global batch {global_batch_size} does not split over {process_count} "
                     "processes")
  num_train = dataset_info(name, data_dir=data_dir, fashion_mnist_dir=fashion_mnist_dir).num_train
  if name in _SMALL_SHAPES:
    return num_train // global_batch_size
  return (num_train // process_count) // (global_batch_size // process_count)


@functools.lru_cache(maxsize=8)
def _arrays(name: str, split: str, data_dir: str | None,
            fashion_mnist_dir: str) -> tuple[np.ndarray, np.ndarray]:
  """A whole small split, decoded once into memory (at most ~150 MB), in its stored order.

  Cached by its arguments, so that each evaluation does not decode the test split again.
  """
  builder = _builder(name, data_dir, fashion_mnist_dir)
  examples = builder.as_dataset(split=split, shuffle_files=False)
  # One batch of exactly the split's size (TFDS's batch_size=-1 needs split metadata, which
  # tfds.testing.mock_data does not provide).
  examples = examples.batch(_num_examples(builder, split)).get_single_element()
  return examples["image"].numpy(), examples["label"].numpy().astype(np.int32)


def _seed(*parts: Any) -> Any:
  """A stateless-op seed (shape [2] int64) that mixes all of `parts`."""
  tf = _tf()
  seed = tf.constant([0, 0], tf.int64)
  for part in parts:
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(part, tf.int64))
  return seed


def _epochs(first_epoch: int, epoch_items: Callable[[Any], Any]) -> Any:
  """(epoch, position in epoch, item) for every item of every epoch from `first_epoch` on."""
  tf = _tf()

  def positioned(epoch):
    return epoch_items(epoch).enumerate().map(lambda position, item: (epoch, position, item))

  return tf.data.Dataset.range(first_epoch, _LAST_EPOCH).flat_map(positioned)


def _in_memory_train(name: str, images: np.ndarray, labels: np.ndarray, *, batch: int,
                     first_row: int, global_batch: int, first_epoch: int, offset_steps: int,
                     shuffle_seed: Callable[[Any], Any],
                     augment_seed: Callable[[Any, Any], Any]) -> Any:
  """This process's rows first_row..first_row+batch of every global batch of a small dataset.

  The items are whole batches of indices, so the resume offset is skipped without touching
  any image, and gathering and augmenting a batch at once is much faster than per example.
  """
  tf = _tf()
  from act_jax.data import augmentations  # imports TF
  images, labels = tf.constant(images), tf.constant(labels)
  steps = len(labels) // global_batch

  def epoch_items(epoch):
    order = tf.random.experimental.stateless_shuffle(tf.range(len(labels)), shuffle_seed(epoch))
    global_batches = tf.reshape(order[:steps * global_batch], [steps, global_batch])
    return tf.data.Dataset.from_tensor_slices(global_batches[:, first_row:first_row + batch])

  def make_batch(epoch, step, indices):
    batch_images = tf.gather(images, indices)
    if name in ("cifar10", "cifar100"):
      batch_images = augmentations.cifar_train(batch_images, augment_seed(epoch, step),
                                               first_row=first_row,
                                               global_batch_size=global_batch)
    return {"image": augmentations.to_unit_range(batch_images),
            "label": tf.gather(labels, indices)}

  return _epochs(first_epoch, epoch_items).skip(offset_steps).map(
      make_batch, num_parallel_calls=tf.data.AUTOTUNE)


def _imagenet_train(records: Any, num_examples: int, image_size: int, *, batch: int,
                    first_epoch: int, offset_steps: int, shuffle_seed: Callable[[Any], Any],
                    augment_seed: Callable[[Any, Any], Any]) -> Any:
  """Batches of ImageNet: epochs of encoded JPEGs through a shuffle buffer, decoded after skip.

  TFDS stores ImageNet's examples in a random order already, so a buffer shuffle (reseeded
  every epoch) on top of the fixed file order mixes well enough. Resuming mid-epoch reads
  (but does not decode) the records before the resume point again. `Dataset.shuffle` also
  mixes in TF's global seed, which nothing in act_jax sets (no other module imports TF).
  """
  tf = _tf()
  from act_jax.data import augmentations  # imports TF
  per_epoch = (num_examples // batch) * batch

  def epoch_items(epoch):
    seed = tf.random.stateless_uniform([], shuffle_seed(epoch), minval=None, maxval=None,
                                       dtype=tf.int64)
    return records.shuffle(IMAGENET_SHUFFLE_BUFFER, seed=seed).take(per_epoch)

  def make_example(epoch, position, record):
    image = augmentations.imagenet_train(record["image"], augment_seed(epoch, position),
                                         image_size)
    return {"image": augmentations.to_unit_range(image),
            "label": tf.cast(record["label"], tf.int32)}

  examples = _epochs(first_epoch, epoch_items).skip(offset_steps * batch).map(
      make_example, num_parallel_calls=tf.data.AUTOTUNE)
  return examples.batch(batch, drop_remainder=True)


def _ceil_div(numerator: int, denominator: int) -> int:
  return -(-numerator // denominator)


def _deterministic(dataset: Any) -> Any:
  """Parallel maps keep their order: the same step must always get the same batch."""
  options = _tf().data.Options()
  options.deterministic = True
  return dataset.with_options(options)


def train_batches(name: str, *, per_process_batch_size: int, seed: int, start_step: int = 0,
                  data_dir: str | None = None, image_size: int | None = None,
                  process_index: int = 0, process_count: int = 1,
                  fashion_mnist_dir: str = DEFAULT_FASHION_MNIST_DIR) -> Iterator[Batch]:
  """Endless {"image": float32 [b, H, W, C] in [0, 1], "label": int32 [b]} batches.

  This process's part of each global batch of per_process_batch_size * process_count. The first
  batch is the one an uninterrupted iterator yields at step `start_step`. Each epoch drops its
  last partial batch; every process has the same number of batches per epoch.
  """
  _check_name(name)
  tf, tfds = _tf(), _tfds()
  batch = per_process_batch_size
  if name in _SMALL_SHAPES:
    images, labels = _arrays(name, "train", data_dir, fashion_mnist_dir)
    # Every process holds the whole split: its "process" in the seeds below is 0 for all.
    num_examples, batch, seed_process = len(labels), batch * process_count, 0
  else:
    builder = _builder(name, data_dir, fashion_mnist_dir)
    split = _process_split("train", process_index, process_count, drop_remainder=True)
    records = builder.as_dataset(split=split, shuffle_files=False,
                                 decoders={"image": tfds.decode.SkipDecoding()})
    num_examples, seed_process = _num_examples(builder, split), process_index
  if num_examples < batch:
    raise ValueError(f"{name}: {num_examples} training examples, fewer than one batch of "
                     f"{batch}")
  first_epoch, offset_steps = divmod(start_step, num_examples // batch)
  position = dict(first_epoch=first_epoch, offset_steps=offset_steps,
                  shuffle_seed=functools.partial(_seed, seed, seed_process, 0),
                  augment_seed=functools.partial(_seed, seed, seed_process, 1))
  if name in _SMALL_SHAPES:
    batches = _in_memory_train(name, images, labels, batch=per_process_batch_size,
                               first_row=process_index * per_process_batch_size,
                               global_batch=batch, **position)
  else:
    batches = _imagenet_train(records, num_examples, image_size or DEFAULT_IMAGENET_SIZE,
                              batch=batch, **position)
  return _deterministic(batches.prefetch(tf.data.AUTOTUNE)).as_numpy_iterator()


def _imagenet_eval_examples(split: str, process_index: int, process_count: int,
                            data_dir: str | None, image_size: int | None) -> Any:
  """This process's part of an ImageNet split as {"image": float32 [0, 1], "label"} examples."""
  tf = _tf()
  from act_jax.data import augmentations  # imports TF
  builder = _builder("imagenet2012", data_dir, DEFAULT_FASHION_MNIST_DIR)
  size = image_size or DEFAULT_IMAGENET_SIZE
  records = builder.as_dataset(split=_process_split(split, process_index, process_count, False),
                               shuffle_files=False)
  return records.map(lambda e: {
      "image": augmentations.to_unit_range(augmentations.imagenet_eval(e["image"], size)),
      "label": tf.cast(e["label"], tf.int32)}, num_parallel_calls=tf.data.AUTOTUNE)


def _in_memory_eval(images: np.ndarray, labels: np.ndarray, *, batch: int, process_index: int,
                    process_count: int) -> Iterator[Batch]:
  """This process's rows of each padded global batch of a small split, in the split's order."""
  global_batch = batch * process_count
  num_batches = _ceil_div(len(labels), global_batch)
  padding = num_batches * global_batch - len(labels)
  mask = np.concatenate([np.ones(len(labels), np.float32), np.zeros(padding, np.float32)])
  indices = np.concatenate([np.arange(len(labels)), np.zeros(padding, np.int64)])
  rows = indices.reshape(num_batches, global_batch)[:, process_index * batch:][:, :batch]
  masks = mask.reshape(num_batches, global_batch)[:, process_index * batch:][:, :batch]
  for batch_rows, batch_mask in zip(rows, masks, strict=True):
    black = batch_mask[:, None, None, None]
    yield {"image": images[batch_rows].astype(np.float32) / 255.0 * black,
           "label": np.where(batch_mask > 0, labels[batch_rows], 0).astype(np.int32),
           "mask": batch_mask}


def eval_batches(name: str, *, per_process_batch_size: int, split: str = "test",
                 num_examples: int | None = None, data_dir: str | None = None,
                 image_size: int | None = None, process_index: int = 0, process_count: int = 1,
                 fashion_mnist_dir: str = DEFAULT_FASHION_MNIST_DIR) -> Iterator[Batch]:
  """One pass over the first `num_examples` (default: all) of `split`, with a float32 "mask".

  Batches are padded to full size (mask 0, label 0, black image), so the eval step compiles
  once; every process yields the same number of them, so that a collective eval step never
  waits on a process that has run out of data. Each real example appears in exactly one
  process's batches; for the small datasets the global batches do not depend on the number of
  processes (see the module docstring).
  """
  _check_name(name)
  tf = _tf()
  split = _eval_split(name, split)
  builder = _builder(name, data_dir, fashion_mnist_dir)
  total = _num_examples(builder, split)
  if num_examples is not None and num_examples < total:  # TFDS rejects slices past the end
    split, total = f"{split}[:{num_examples}]", num_examples
  batch = per_process_batch_size
  if name in _SMALL_SHAPES:
    images, labels = _arrays(name, split, data_dir, fashion_mnist_dir)
    return _in_memory_eval(images, labels, batch=batch, process_index=process_index,
                           process_count=process_count)
  num_batches = _ceil_div(_ceil_div(total, process_count), batch)  # of the largest part
  examples = _imagenet_eval_examples(split, process_index, process_count, data_dir, image_size)
  examples = examples.map(lambda e: {**e, "mask": tf.constant(1.0)})
  padding = tf.data.Dataset.from_tensors({
      "image": tf.zeros(_image_shape(name, image_size), tf.float32),
      "label": tf.constant(0, tf.int32), "mask": tf.constant(0.0)}).repeat()
  stream = examples.concatenate(padding).take(num_batches * batch).batch(batch)
  return _deterministic(stream.prefetch(tf.data.AUTOTUNE)).as_numpy_iterator()
