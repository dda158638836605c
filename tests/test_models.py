"""Every model builds and runs at tiny size; the full-size ones have the published parameter counts."""

import jax
import jax.numpy as jnp
import pytest

from act_jax import models

INPUT_SHAPES = {"small_cnn": (28, 28, 1), "resnet50_imagenet": (64, 64, 3)}


def tiny(name, dtype=jnp.float32):
  return models.build_model(name, num_classes=7, dtype=dtype, base_width=4)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_forward_in_train_and_eval_mode(name):
  model = tiny(name)
  images = jax.random.uniform(jax.random.PRNGKey(0), (2, *INPUT_SHAPES.get(name, (32, 32, 3))))
  variables = model.init(jax.random.PRNGKey(1), images, train=False)
  assert set(variables) == {"params", "batch_stats"}
  logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"],
                         updates["batch_stats"])
  assert any(jax.tree.leaves(changed))
  eval_logits = model.apply(variables, images, train=False)  # no mutable collection needed
  assert eval_logits.shape == (2, 7)


@pytest.mark.parametrize("name", ["small_cnn", "resnet18_cifar"])
def test_bfloat16_compute_returns_float32_logits_and_params(name):
  model = tiny(name, jnp.bfloat16)
  images = jnp.ones((2, *INPUT_SHAPES.get(name, (32, 32, 3))))
  variables = model.init(jax.random.PRNGKey(1), images, train=False)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  assert model.apply(variables, images, train=False).dtype == jnp.float32


@pytest.mark.parametrize("name,input_shape,num_classes,expected", [
    ("resnet18_cifar", (32, 32, 3), 10, 11_173_962),
    ("wrn28_10", (32, 32, 3), 10, 36_479_194),
    ("resnet50_imagenet", (224, 224, 3), 1000, 25_557_032),
])
def test_full_size_parameter_counts_match_reference_architectures(name, input_shape, num_classes,
                                                                   expected):
  model = models.build_model(name, num_classes=num_classes)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *input_shape)),
                                             train=False))
  assert sum(x.size for x in jax.tree.leaves(shapes["params"])) == expected


def test_unknown_model_lists_valid_names():
  with pytest.raises(ValueError, match="valid names: small_cnn, resnet18_cifar"):
    models.build_model("vgg16", num_classes=10)
