"""TFDS and tf.data: ImageNet streaming, CIFAR read once into arrays, and the TFDS access that
`tfds_by_name` builds on. The only TF importer.

TensorFlow and TFDS are imported inside the functions, so that importing this module (and
everything that only needs the names here) works on a machine without TensorFlow; only
ImageNet runs, and the first read of a CIFAR or `tfds_by_name` split, need them.

ImageNet training batches are a pure function of (dataset, seed, step, process, batch size),
drawn with stateless random ops only: `imagenet_train_batches(..., start_step=k)` yields what an
uninterrupted iterator yields from step k on. Each process reads only its own part of every
split (`tfds.split_for_jax_process`), shuffles it with a seed from (seed, process, epoch) and
augments each example with a seed from (seed, process, epoch, position).
"""

import contextlib
import functools
import os
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from absl import logging as absl_logging
from etils import epath

from act_jax import stderr
from act_jax.data import catalog
from act_jax.errors import UserError

DEFAULT_IMAGENET_SIZE = 224
IMAGENET_SHUFFLE_BUFFER = 16_384  # examples (encoded JPEGs, ~2 GB) mixed across file order
_LAST_EPOCH = 2**62  # "forever": the train stream is an endless sequence of epochs


IMAGENET_MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
PREPARE_DOCS = "docs/datasets.md"


class DatasetNotPreparedError(UserError):
  """A TFDS dataset is not prepared where the config says, or TensorFlow is missing to read it;
  the message names `dataset.data_dir` and how to prepare it."""


@functools.cache
def _tf() -> Any:
  """TensorFlow, imported on first use and kept off the GPUs: the accelerators belong to JAX."""
  try:
    with stderr.captured():  # TF's C++ start-up notices (oneDNN, CPU features)
      import tensorflow as tf
  except ImportError:
    raise DatasetNotPreparedError(
        "reading a TFDS dataset (ImageNet, or CIFAR or a dataset.name = tfds dataset without "
        "its .npz cache) needs TensorFlow: pip install -e '.[tfds]'") from None
  tf.config.set_visible_devices([], "GPU")
  return tf


def tfds_module() -> Any:
  _tf()
  import tensorflow_datasets as tfds
  return tfds


def prepare_command(name: str, data_dir: str | None) -> str:
  return (f"python -m act_jax.prepare_data --dataset={name}"
          + (f" --data_dir={data_dir}" if data_dir else ""))


@contextlib.contextmanager
def _quiet_absl_warnings() -> Iterator[None]:
  previous = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    absl_logging.set_verbosity(previous)


def tfds_builder(name: str, data_dir: str | None, field: str = "dataset.name") -> Any:
  """TFDS's builder of `name` (prepared or not), or a one-line error naming `field` (the config
  field or flag that gave the name) for a dataset, config or version TFDS lacks."""
  tfds = tfds_module()
  try:
    with _quiet_absl_warnings():
      return tfds.builder(name, data_dir=data_dir)
  except (tfds.core.registered.DatasetNotFoundError, ValueError, AssertionError) as error:
    reason = ("" if isinstance(error, tfds.core.registered.DatasetNotFoundError)  # lists them all
              else "; " + " ".join(f"{type(error).__name__}: {error}".split())[:200])
    raise DatasetNotPreparedError(
        f"{field} = {name!r}: TFDS has no such dataset, config or version (its names: "
        f"tfds.list_builders(), or https://www.tensorflow.org/datasets/catalog{reason})"
        ) from None


def _is_prepared(builder: Any) -> bool:
  with _quiet_absl_warnings():  # TFDS warns that an unprepared folder has no dataset_info.json
    return builder.is_prepared()


def prepared_builder(name: str, data_dir: str | None, field: str = "dataset.name") -> Any:
  """The TFDS builder of a dataset prepared in `data_dir`. Training and evaluation never
  download or build a dataset: on a cluster every worker would start it, and without a network
  TFDS retries for minutes before failing. `prepare_data` does it once, beforehand."""
  prepared = tfds_builder(name, data_dir, field)
  if not _is_prepared(prepared):
    raise DatasetNotPreparedError(
        f"{name} is not prepared in dataset.data_dir={catalog.data_dir_root(data_dir)}: "
        f"prepare it once with `{prepare_command(name, data_dir)}` (see {PREPARE_DOCS}), or point "
        "--config.dataset.data_dir at a prepared copy")
  return prepared


def prepare(name: str, data_dir: str | None, manual_dir: str | None = None) -> None:
  """Downloads and prepares CIFAR (and its .npz caches) or ImageNet in `data_dir`; any other
  TFDS dataset goes through `tfds_by_name.prepare`.

  ImageNet cannot be downloaded by TFDS: its two tarballs must be in `manual_dir` (default:
  DATA_DIR/downloads/manual), and a missing one is reported before anything is built.
  """
  tfds = tfds_module()
  dataset = tfds_builder(name, data_dir)
  if name == "imagenet2012" and not _is_prepared(dataset):
    manual = epath.Path(manual_dir or os.path.join(catalog.data_dir_root(data_dir), "downloads",
                                                   "manual"))
    missing = [f for f in IMAGENET_MANUAL_FILES if not (manual / f).exists()]
    if missing:
      raise DatasetNotPreparedError(
          f"imagenet2012: {', '.join(missing)} not found in {manual}: download them from "
          f"image-net.org (TFDS cannot) and pass --manual_dir (see {PREPARE_DOCS})")
  dataset.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir))
  if name in catalog.IN_MEMORY_DATASETS:
    for split in ("train", "test"):
      cifar_arrays(name, split, data_dir)


def split_size(builder: Any, split: Any) -> int:
  """The size of a (sub)split, from the metadata TFDS attaches to the dataset (reads no data)."""
  count = int(builder.as_dataset(split=split).cardinality())
  if count < 0:
    raise ValueError(f"{builder.name}: the size of split {split} is unknown")
  return count


def _read_cache(cache: str, name: str, split: str, data_dir: str | None
                ) -> tuple[np.ndarray, np.ndarray]:
  """The cached split, checked: a truncated, malformed or stale cache raises
  `DatasetDamagedError` naming the file and how to rebuild it."""
  def damaged(reason: str) -> catalog.DatasetDamagedError:
    return catalog.DatasetDamagedError(
        f"{cache} is damaged or stale ({reason}): delete it, then rebuild it with "
        f"`{prepare_command(name, data_dir)}`")
  try:
    with np.load(cache) as arrays:
      images, labels = arrays["image"], arrays["label"]
  except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as error:
    raise damaged(" ".join(f"{type(error).__name__}: {error}".split())[:160]) from None
  shape = catalog.IMAGE_SHAPES[name]
  if images.dtype != np.uint8 or images.shape[1:] != shape:
    raise damaged(f"images {images.dtype}{list(images.shape)}, expected uint8 [n, "
                  f"{', '.join(map(str, shape))}]")
  if labels.shape != (len(images),):
    raise damaged(f"{labels.shape} labels for {len(images)} images")
  if labels.size and not 0 <= labels.min() <= labels.max() < catalog.NUM_CLASSES[name]:
    raise damaged(f"labels outside [0, {catalog.NUM_CLASSES[name]})")
  return images, labels.astype(np.int32)


def whole_split(builder: Any, split: str, **as_dataset_args: Any) -> Any:
  """Every example of `split` in its stored order, as NumPy arrays (a dict of features, or the
  (input, target) pair with `as_supervised=True`), in one batch of exactly the
  split's size (TFDS's batch_size=-1 needs split metadata, which tfds.testing.mock_data does
  not provide)."""
  examples = builder.as_dataset(split=split, shuffle_files=False, **as_dataset_args)
  examples = examples.batch(split_size(builder, split)).get_single_element()
  return tfds_module().as_numpy(examples)


def write_cache(cache: str, **arrays: np.ndarray) -> None:
  """Writes the .npz whole or not at all: a crash leaves no half-written cache behind."""
  os.makedirs(os.path.dirname(cache), exist_ok=True)
  temporary = cache + ".tmp.npz"
  np.savez(temporary, **arrays)
  os.replace(temporary, cache)


def cifar_arrays(name: str, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  """A whole CIFAR split as uint8 images and int32 labels, in its stored order.

  Read through TFDS the first time and cached as a `.npz` beside the TFDS data
  (`catalog.npz_cache_path`), so that later runs, on this machine or on one the cache is
  copied to, need no TensorFlow.
  """
  cache = catalog.npz_cache_path(data_dir, name, split)
  if os.path.exists(cache):
    return _read_cache(cache, name, split, data_dir)
  examples = whole_split(prepared_builder(name, data_dir), split)
  images, labels = examples["image"], examples["label"].astype(np.int32)
  write_cache(cache, image=images, label=labels)
  return images, labels


def imagenet_info(data_dir: str | None, image_size: int | None) -> catalog.DatasetInfo:
  """ImageNet's classes and split sizes, preparing the TFDS dataset if needed."""
  builder = prepared_builder("imagenet2012", data_dir)
  size = image_size or DEFAULT_IMAGENET_SIZE
  return catalog.DatasetInfo(
      name="imagenet2012", num_classes=builder.info.features["label"].num_classes,
      image_shape=(size, size, 3), num_train=split_size(builder, "train"),
      num_test=split_size(builder, "validation"))


def imagenet_steps_per_epoch(data_dir: str | None, *, global_batch_size: int,
                             process_count: int) -> int:
  """Every process has floor(num_train / process_count) examples (the split drops the
  remainder) and takes whole batches of global_batch_size / process_count from them."""
  num_train = split_size(prepared_builder("imagenet2012", data_dir), "train")
  return (num_train // process_count) // (global_batch_size // process_count)


def _process_split(split: str, process_index: int, process_count: int,
                   drop_remainder: bool) -> Any:
  return tfds_module().split_for_jax_process(split, process_index=process_index,
                                       process_count=process_count, drop_remainder=drop_remainder)


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


def _deterministic(dataset: Any) -> Any:
  """Parallel maps keep their order: the same step must always get the same batch."""
  options = _tf().data.Options()
  options.deterministic = True
  return dataset.with_options(options)


def imagenet_train_batches(*, per_process_batch_size: int, seed: int, start_step: int = 0,
                           data_dir: str | None = None, image_size: int | None = None,
                           process_index: int = 0, process_count: int = 1
                           ) -> Iterator[catalog.HostBatch]:
  """Endless {"image": float32 [b, H, W, 3] in [0, 1], "label": int32 [b]} batches.

  Epochs of encoded JPEGs through a shuffle buffer, decoded after the resume skip. TFDS stores
  ImageNet's examples in a random order already, so a buffer shuffle (reseeded every epoch) on
  top of the fixed file order mixes well enough. Resuming mid-epoch reads (but does not decode)
  the records before the resume point again. `Dataset.shuffle` also mixes in TF's global seed,
  which nothing in act_jax sets (no other module imports TF).
  """
  tf, tfds = _tf(), tfds_module()
  from act_jax.data import augmentations  # imports TF
  batch = per_process_batch_size
  builder = prepared_builder("imagenet2012", data_dir)
  split = _process_split("train", process_index, process_count, drop_remainder=True)
  records = builder.as_dataset(split=split, shuffle_files=False,
                               decoders={"image": tfds.decode.SkipDecoding()})
  num_examples = split_size(builder, split)
  if num_examples < batch:
    raise ValueError(f"imagenet2012: {num_examples} training examples, fewer than one batch "
                     f"of {batch}")
  first_epoch, offset_steps = divmod(start_step, num_examples // batch)
  per_epoch = (num_examples // batch) * batch
  shuffle_seed = functools.partial(_seed, seed, process_index, 0)
  augment_seed = functools.partial(_seed, seed, process_index, 1)
  size = image_size or DEFAULT_IMAGENET_SIZE

  def epoch_items(epoch):
    epoch_seed = tf.random.stateless_uniform([], shuffle_seed(epoch), minval=None, maxval=None,
                                             dtype=tf.int64)
    return records.shuffle(IMAGENET_SHUFFLE_BUFFER, seed=epoch_seed).take(per_epoch)

  def make_example(epoch, position, record):
    image = augmentations.imagenet_train(record["image"], augment_seed(epoch, position), size)
    return {"image": augmentations.to_unit_range(image),
            "label": tf.cast(record["label"], tf.int32)}

  examples = _epochs(first_epoch, epoch_items).skip(offset_steps * batch).map(
      make_example, num_parallel_calls=tf.data.AUTOTUNE)
  batches = examples.batch(batch, drop_remainder=True)
  return _deterministic(batches.prefetch(tf.data.AUTOTUNE)).as_numpy_iterator()


def imagenet_eval_batches(*, per_process_batch_size: int, num_examples: int | None = None,
                          data_dir: str | None = None, image_size: int | None = None,
                          process_index: int = 0, process_count: int = 1
                          ) -> Iterator[catalog.HostBatch]:
  """One pass over the first `num_examples` (default: all) of ImageNet's labelled validation
  split, this process's part, with a float32 "mask" and an int32 "index".

  Batches are padded to full size (mask 0, label 0, black image), and every process yields the
  same number of them, so that a collective step never waits on a process that has run out.
  The index is the position in this stream (batch x global batch + process's row offset +
  row): unique per example, for per-example attack keys.
  """
  tf = _tf()
  from act_jax.data import augmentations  # imports TF
  split = "validation"
  builder = prepared_builder("imagenet2012", data_dir)
  total = split_size(builder, split)
  if num_examples is not None and num_examples < total:  # TFDS rejects slices past the end
    split, total = f"{split}[:{num_examples}]", num_examples
  batch = per_process_batch_size
  size = image_size or DEFAULT_IMAGENET_SIZE
  largest_part = -(-total // process_count)  # ceiling divisions
  num_batches = -(-largest_part // batch)
  records = builder.as_dataset(split=_process_split(split, process_index, process_count, False),
                               shuffle_files=False)
  examples = records.map(lambda e: {
      "image": augmentations.to_unit_range(augmentations.imagenet_eval(e["image"], size)),
      "label": tf.cast(e["label"], tf.int32), "mask": tf.constant(1.0)},
      num_parallel_calls=tf.data.AUTOTUNE)
  padding = tf.data.Dataset.from_tensors({
      "image": tf.zeros((size, size, 3), tf.float32), "label": tf.constant(0, tf.int32),
      "mask": tf.constant(0.0)}).repeat()
  stream = examples.concatenate(padding).take(num_batches * batch).batch(batch)
  global_batch = batch * process_count
  for number, host_batch in enumerate(
      _deterministic(stream.prefetch(tf.data.AUTOTUNE)).as_numpy_iterator()):
    first = number * global_batch + process_index * batch
    yield {**host_batch, "index": np.arange(first, first + batch, dtype=np.int32)}
