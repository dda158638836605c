"""Data parallelism: the step over 8 (simulated CPU) devices equals the step over one device."""

import pytest

from helpers import run_script_on_eight_devices


@pytest.mark.slow
def test_eight_device_step_equals_one_device_step():
  """Loss, grads (through the updated params), BN statistics and PGD noise all agree.

  Cross-replica BatchNorm over the "data" axis, the attack's per-example keys and its
  global-batch normalisation make the sharded step compute the single-device step. With
  per-device BatchNorm, the new running statistics are the mean of each shard's own.
  """
  differences = run_script_on_eight_devices("step_equivalence.py")
  assert differences["num_devices"] == 8
  assert differences["update_size"] > 1e-3  # the step really moved the parameters
  for key in ("params", "robust_params", "batch_stats", "metrics", "per_device_bn"):
    assert differences[key] < 1e-5, (key, differences)
  # The switch matters: per-device variances differ from the variance over the global batch.
  assert differences["per_device_vs_sync_bn"] > 1e-4


@pytest.mark.slow
def test_eight_device_robustness_evaluation_equals_one_device():
  """Every attack of the evaluation suite counts the same examples when sharded 8 ways."""
  runs = run_script_on_eight_devices("robustness_equivalence.py")
  assert runs["8"]["num_examples"] == runs["1"]["num_examples"] == 29
  assert runs["8"]["accuracy"] == runs["1"]["accuracy"]
  # Unrolled, APGD, APGD-T and FAB-T run in parts, their state sharded between the calls.
  assert runs["8_unrolled"]["accuracy"] == runs["1_unrolled"]["accuracy"]
  for run in ("1", "1_unrolled"):
    robust = runs[run]["accuracy"]["robust"]
    assert robust["worst_case"] < robust["clean"]  # the attacks did something


def test_eight_devices_draw_the_same_augmented_batches_as_one():
  """The in-memory pipeline gathers and augments on the devices, keyed by global position."""
  differences = run_script_on_eight_devices("data_equivalence.py")
  assert differences["num_devices"] == 8
  assert differences["images"] == 0.0 and differences["labels"] == 0
