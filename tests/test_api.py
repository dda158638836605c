"""`act_jax.load_model`: a model that says which checkpoint it holds, warns when that is not the
end of its run, and refuses images it would otherwise classify silently wrong."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import act_jax
from act_jax import api, train

from helpers import make_tiny_config

STOP_STEP = 5  # of the tiny config's 8


@pytest.fixture(scope="module")
def run(fake_fashion_mnist_dir, tmp_path_factory):
  """A tiny ACT run loaded when stopped at step 5 (as a preemption stops it), then finished."""
  root = tmp_path_factory.mktemp("api")
  config = make_tiny_config(fake_fashion_mnist_dir, str(root / "tfds"))
  workdir = str(root / "run")
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(train.Preemption, "requested", lambda self, step: step >= STOP_STEP)
    train.train_and_evaluate(config, workdir)
  with warnings.catch_warnings(record=True) as stopped_warnings:
    warnings.simplefilter("always")
    stopped = act_jax.load_model(workdir)
  train.train_and_evaluate(config, workdir)
  with warnings.catch_warnings(record=True) as finished_warnings:
    warnings.simplefilter("always")
    finished = act_jax.load_model(workdir)
  return {"workdir": workdir, "stopped": stopped, "stopped_warnings": stopped_warnings,
          "finished": finished, "finished_warnings": finished_warnings}


def test_a_model_says_which_checkpoint_it_holds_and_warns_once_when_unfinished(run):
  stopped, finished = run["stopped"], run["finished"]
  assert (stopped.step, stopped.total_steps, stopped.finished) == (STOP_STEP, 8, False)
  assert [w.category for w in run["stopped_warnings"]] == [api.UnfinishedRunWarning]
  message = str(run["stopped_warnings"][0].message)
  assert "unfinished" in message and f"step {STOP_STEP} of 8" in message
  assert "step 5 of 8, unfinished" in repr(stopped) and "robust model" in repr(stopped)
  assert (finished.step, finished.total_steps, finished.finished) == (8, 8, True)
  assert run["finished_warnings"] == []
  # An earlier checkpoint asked for by its step is what the caller wanted: no warning.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert act_jax.load_model(run["workdir"], "natural", step=6).step == 6


def test_images_it_would_misclassify_are_refused_in_one_line(run):
  model = run["finished"]
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (4, 28, 28, 1)).astype(np.uint8)
  images = pixels.astype(np.float32) / 255
  logits = np.asarray(model(images))
  assert logits.shape == (4, 10) and logits.dtype == np.float32
  # Fashion-MNIST arrays come without a channel axis; a one-channel model takes them as they are.
  np.testing.assert_array_equal(np.asarray(model(images[..., 0])), logits)
  np.testing.assert_array_equal(np.asarray(model(jnp.asarray(images))), logits)
  refused = {
      "uint8": (pixels, "images of dtype uint8; this model takes float32 in [0, 1]: pass "
                        "images.astype(np.float32) / 255"),
      "0..255": (pixels.astype(np.float32), "images with values in [0, 255]; this model takes "
                                            "float32 in [0, 1]: divide them by 255"),
      "normalised": ((images - 0.5) / 0.25, "no normalisation"),
      "RGB": (np.zeros((4, 32, 32, 3), np.float32),
              "images of shape (4, 32, 32, 3); this model takes NHWC (N, 28, 28, 1)"),
      "unbatched": (images[0], "add a batch axis"),
  }
  for name, (bad, message) in refused.items():
    with pytest.raises(api.ImagesError) as error:
      model(bad)
    assert message in str(error.value) and "\n" not in str(error.value), name
  # Inside jit and grad the values are unknown: dtype and shape are still checked.
  np.testing.assert_allclose(np.asarray(jax.jit(model)(images)), logits, rtol=1e-5, atol=1e-5)
  gradient = jax.grad(lambda x: model(x)[:, 0].sum())(jnp.asarray(images))
  assert gradient.shape == images.shape
  with pytest.raises(api.ImagesError, match="dtype uint8"):
    jax.jit(model)(pixels)
