"""The ACT train step against a slow reference that differentiates each loss w.r.t. both models."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from act_jax import attacks, losses, models, optimizers
from act_jax.methods.act import ACTHyperparams
from act_jax.methods.common import AttackBudget
from act_jax.train_state import create_act_state, eval_mode_logits

from helpers import assert_trees_close, run_one_device_step

HP = ACTHyperparams(natural_alpha=0.8, robust_alpha=0.7, temperature=4.0,
                    attack_loss_reduction="reference",
                    attack=AttackBudget(eps=0.1, step_size=0.02, num_steps=3))
IMAGE_SHAPE = (8, 8, 1)
BATCH = 6


def optim_config():
  return ml_collections.ConfigDict(dict(learning_rate=0.1, momentum=0.9, weight_decay=5e-4,
                                        lr_decay_epochs=(1,), lr_decay_factor=0.2))


@pytest.fixture(scope="module")
def setup():
  model = models.build_model("small_cnn", num_classes=10, base_width=2)
  tx = optimizers.sgd_with_coupled_weight_decay(
      optim_config(), optimizers.learning_rate_schedule(optim_config(), 10))
  state = create_act_state(model, tx, jax.random.PRNGKey(0), IMAGE_SHAPE)
  # Non-trivial running statistics, so eval-mode and train-mode BatchNorm really differ.
  state = state.replace(robust=state.robust.replace(batch_stats=jax.tree.map(
      lambda s: s + 0.3, state.robust.batch_stats)))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.uniform(size=(BATCH, *IMAGE_SHAPE)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, BATCH), jnp.int32)}
  return model, tx, state, batch


def run_step(state, batch, rng):
  return run_one_device_step(state, batch, rng, hp=HP, optim_config=optim_config())


def train_forward(model, params, batch_stats, images):
  return model.apply({"params": params, "batch_stats": batch_stats}, images, train=True,
                     mutable=["batch_stats"])


def attack_keys(rng):
  """The step's per-example keys at step 0: one per global example index."""
  return jax.vmap(jax.random.fold_in, (None, 0))(jax.random.fold_in(rng, 0), jnp.arange(BATCH))


def reference_adversarial(model, state, batch, rng, robust_logits_fn=None):
  """x' as the step should craft it; by default with the robust model in eval mode."""
  natural_logits, _ = train_forward(model, state.natural.params, state.natural.batch_stats,
                                    batch["image"])
  return attacks.act_training_attack(
      robust_logits_fn or eval_mode_logits(state.robust), batch["image"], batch["label"],
      natural_logits, attack_keys(rng), eps=HP.attack.eps,
      step_size=HP.attack.step_size, num_steps=HP.attack.num_steps, alpha=HP.robust_alpha,
      reduction=HP.attack_loss_reduction, global_batch_size=BATCH)


def reference_losses(model, state, batch, adversarial):
  """L_G and L_F as functions of *both* parameter trees, with x' held fixed."""

  def logits(natural_params, robust_params):
    natural, _ = train_forward(model, natural_params, state.natural.batch_stats, batch["image"])
    robust, _ = train_forward(model, robust_params, state.robust.batch_stats, adversarial)
    return natural, robust

  def natural_loss(natural_params, robust_params):
    natural, robust = logits(natural_params, robust_params)
    return losses.act_model_loss(natural, robust, batch["label"], alpha=HP.natural_alpha,
                                 temperature=HP.temperature)[0]

  def robust_loss(natural_params, robust_params):
    natural, robust = logits(natural_params, robust_params)
    return losses.act_model_loss(robust, natural, batch["label"], alpha=HP.robust_alpha,
                                 temperature=HP.temperature)[0]

  return natural_loss, robust_loss


def test_no_gradient_crosses_between_models(setup):
  model, _, state, batch = setup
  adversarial = reference_adversarial(model, state, batch, jax.random.PRNGKey(7))
  natural_loss, robust_loss = reference_losses(model, state, batch, adversarial)
  args = (state.natural.params, state.robust.params)
  for grads in (jax.grad(natural_loss, argnums=1)(*args), jax.grad(robust_loss, argnums=0)(*args)):
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))
  # ... while each loss does move its own model.
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(
      jax.grad(natural_loss, argnums=0)(*args))) > 0


def test_step_updates_equal_independent_gradients(setup):
  model, tx, state, batch = setup
  rng = jax.random.PRNGKey(7)
  new_state, metrics = run_step(state, batch, rng)
  adversarial = reference_adversarial(model, state, batch, rng)
  natural_loss, robust_loss = reference_losses(model, state, batch, adversarial)
  args = (state.natural.params, state.robust.params)
  for name, loss, argnum in (("natural", natural_loss, 0), ("robust", robust_loss, 1)):
    model_state = getattr(state, name)
    grads = jax.grad(loss, argnums=argnum)(*args)
    updates, _ = tx.update(grads, model_state.opt_state, model_state.params)
    expected = jax.tree.map(lambda p, u: p + u, model_state.params, updates)
    assert_trees_close(getattr(new_state, name).params, expected, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(metrics[f"{name}/loss"], loss(*args), rtol=1e-5)
  assert int(new_state.step) == 1
  np.testing.assert_allclose(metrics["learning_rate"], 0.1)


def test_attack_runs_robust_model_in_eval_mode(setup):
  """F's running statistics after the step come from exactly one train-mode pass on x'."""
  model, _, state, batch = setup
  rng = jax.random.PRNGKey(7)
  new_state, _ = run_step(state, batch, rng)
  adversarial = reference_adversarial(model, state, batch, rng)
  _, robust_updates = train_forward(model, state.robust.params, state.robust.batch_stats,
                                    adversarial)
  assert_trees_close(new_state.robust.batch_stats, robust_updates["batch_stats"], rtol=1e-5,
                     atol=1e-6)
  _, natural_updates = train_forward(model, state.natural.params, state.natural.batch_stats,
                                     batch["image"])
  assert_trees_close(new_state.natural.batch_stats, natural_updates["batch_stats"], rtol=1e-5,
                     atol=1e-6)


def test_eval_mode_attack_differs_from_train_mode_attack(setup):
  """Guards the test above: with train-mode BN in the attack, x' would be a different point.

  Both attacks get the same keys, so only the BatchNorm mode differs between them.
  """
  model, _, state, batch = setup
  rng = jax.random.PRNGKey(7)
  eval_mode = reference_adversarial(model, state, batch, rng)
  train_mode = reference_adversarial(
      model, state, batch, rng,
      lambda x: train_forward(model, state.robust.params, state.robust.batch_stats, x)[0])
  assert float(jnp.abs(eval_mode - train_mode).max()) > 0


def test_step_is_deterministic_given_rng_and_varies_with_it(setup):
  _, _, state, batch = setup
  first, _ = run_step(state, batch, jax.random.PRNGKey(1))
  again, _ = run_step(state, batch, jax.random.PRNGKey(1))
  other, _ = run_step(state, batch, jax.random.PRNGKey(2))
  assert_trees_close(first.robust.params, again.robust.params, rtol=0, atol=0)
  differences = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                                             first.robust.params, other.robust.params))
  assert max(differences) > 0
