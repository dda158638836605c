"""Every model builds and runs at tiny size; full-size ones have the published parameter counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from act_jax import models

INPUT_SHAPES = {"small_cnn": (28, 28, 1), "resnet50_imagenet": (64, 64, 3)}
NUM_CLASSES = 7


def tiny(name: str, dtype: jnp.dtype = jnp.float32):
  return models.build_model(name, num_classes=NUM_CLASSES, dtype=dtype, base_width=4)


def images_for(name: str) -> jax.Array:
  shape = (2, *INPUT_SHAPES.get(name, (32, 32, 3)))
  return jnp.asarray(np.random.default_rng(0).uniform(size=shape), jnp.float32)


def init(model, images):
  # Eager init compiles a sampler per kernel shape; an "rbg" key compiles much faster than
  # threefry, which keeps this file quick on CPU. The models accept any key.
  return model.init(jax.random.key(1, impl="rbg"), images, train=False)


def assert_float32_logits(logits):
  assert logits.shape == (2, NUM_CLASSES) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_forward_in_train_and_eval_mode(name):
  model, images = tiny(name), images_for(name)
  variables = init(model, images)
  assert set(variables) == {"params", "batch_stats"}

  logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
  assert_float32_logits(logits)
  assert set(updates) == {"batch_stats"}
  # NumPy, not jnp: eager jnp ops would compile once per statistic shape.
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                         variables["batch_stats"], updates["batch_stats"])
  assert all(jax.tree.leaves(changed))

  assert_float32_logits(model.apply(variables, images, train=False))  # nothing mutable


@pytest.mark.parametrize("name", ["small_cnn", "resnet18_cifar"])
def test_bfloat16_compute_keeps_float32_params_and_logits(name):
  model, images = tiny(name, jnp.bfloat16), images_for(name)
  variables = init(model, images)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
  assert_float32_logits(model.apply(variables, images, train=False))


@pytest.mark.parametrize("name,input_shape,num_classes,expected", [
    ("resnet18_cifar", (32, 32, 3), 10, 11_173_962),
    ("wrn28_10", (32, 32, 3), 10, 36_479_194),
    ("resnet50_imagenet", (224, 224, 3), 1000, 25_557_032),
])
def test_full_size_parameter_counts_match_reference_architectures(name, input_shape, num_classes,
                                                                   expected):
  model = models.build_model(name, num_classes=num_classes)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *input_shape)), train=False))
  assert sum(x.size for x in jax.tree.leaves(shapes["params"])) == expected


def test_unknown_model_lists_valid_names():
  valid = ("small_cnn, resnet18_cifar, resnet34_cifar, resnet50_cifar, wrn28_10, wrn34_10, "
           "resnet50_imagenet")
  with pytest.raises(ValueError, match=f"^unknown model 'vgg16'; valid names: {valid}$"):
    models.build_model("vgg16", num_classes=10)
