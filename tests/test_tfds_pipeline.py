"""ImageNet through tf.data, on `tfds.testing.mock_data`: batches, resume, evaluation padding."""

import itertools

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets", reason="ImageNet's pipeline needs TFDS")

from act_jax.data import tfds_pipeline  # noqa: E402

from helpers import mock_prepared_tfds  # noqa: E402


def take(iterator, count: int) -> list[dict[str, np.ndarray]]:
  return list(itertools.islice(iterator, count))


def test_imagenet_batches_resume_and_evaluation(tmp_path):
  kwargs = {"data_dir": str(tmp_path), "image_size": 32}
  with mock_prepared_tfds(num_examples=12):  # 3 steps an epoch
    info = tfds_pipeline.imagenet_info(**kwargs)
    assert (info.num_classes, info.image_shape) == (1000, (32, 32, 3))

    def batches(start):
      return tfds_pipeline.imagenet_train_batches(per_process_batch_size=4, seed=0,
                                                  start_step=start, **kwargs)
    uninterrupted = take(batches(0), 5)
    resumed = take(batches(2), 3)
    evaluation = list(tfds_pipeline.imagenet_eval_batches(per_process_batch_size=5, **kwargs))
  for batch in uninterrupted:
    assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.float32
    assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0
    assert batch["label"].dtype == np.int32
  for got, want in zip(resumed, uninterrupted[2:], strict=True):
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  assert [batch["mask"].sum() for batch in evaluation] == [5, 5, 2]
  assert [list(batch["index"]) for batch in evaluation] == [
      list(range(5 * b, 5 * b + 5)) for b in range(3)]
