"""ImageNet preprocessing for tf.data (ACT spec, "Training recipes"), seeded statelessly.

Every random choice takes an explicit seed (a shape-[2] int64 tensor) that the caller derives
from (run seed, process, epoch, position in the epoch), so an example is augmented the same way
in a resumed run as in an uninterrupted one; no op here touches TensorFlow's global random state.
No mean/std normalisation: the ACT release feeds raw [0, 1] pixels, and so do we.
Imported only by `tfds_pipeline`, lazily (this module imports TensorFlow). CIFAR's augmentation
runs on the devices instead (`in_memory.cifar_augment`).
"""

import tensorflow as tf

IMAGENET_CROP_SCALE = (0.08, 1.0)
IMAGENET_CROP_RATIO = (3 / 4, 4 / 3)
IMAGENET_RESIZE_RATIO = 256 / 224  # eval: resize the shorter side to 256 for a 224 crop


def to_unit_range(image: tf.Tensor) -> tf.Tensor:
  """[0, 255] pixels -> float32 [0, 1]; the clip absorbs float rounding of the resizes."""
  return tf.clip_by_value(tf.cast(image, tf.float32) / 255.0, 0.0, 1.0)


def _split_seed(seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Two independent seeds, so the crop and the flip are not correlated."""
  first, second = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  return first, second


def imagenet_train(jpeg: tf.Tensor, seed: tf.Tensor, image_size: int) -> tf.Tensor:
  """Random resized crop (scale 0.08-1, ratio 3/4-4/3, as torchvision) and a horizontal flip.

  Takes the encoded JPEG and decodes only the crop window, which is much cheaper than decoding
  the full image. If no window fits in 10 attempts the whole image is used (TF's fallback).
  """
  crop_seed, flip_seed = _split_seed(seed)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.image.extract_jpeg_shape(jpeg), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
      seed=crop_seed, min_object_covered=0.0, aspect_ratio_range=IMAGENET_CROP_RATIO,
      area_range=IMAGENET_CROP_SCALE, max_attempts=10, use_image_if_no_bounding_boxes=True)
  window = tf.stack([begin[0], begin[1], size[0], size[1]])
  image = tf.image.decode_and_crop_jpeg(jpeg, window, channels=3)
  image = tf.image.resize(image, (image_size, image_size), method="bilinear", antialias=True)
  return tf.image.stateless_random_flip_left_right(image, flip_seed)


def imagenet_eval(image: tf.Tensor, image_size: int) -> tf.Tensor:
  """Resize the shorter side to image_size * 256/224, then take the central image_size crop."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = image_size * IMAGENET_RESIZE_RATIO / tf.reduce_min(shape)
  resized_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), image_size)
  image = tf.image.resize(image, resized_shape, method="bilinear", antialias=True)
  top = (resized_shape[0] - image_size) // 2
  left = (resized_shape[1] - image_size) // 2
  return tf.image.crop_to_bounding_box(image, top, left, image_size, image_size)
