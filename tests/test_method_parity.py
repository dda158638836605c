"""One step of natural training, PGD-AT and TRADES against PyTorch written as their papers' code.

Both frameworks start from the same weights, running statistics, batch and attack start, so any
disagreement beyond float32 rounding is a semantic difference: in the attack (eval-mode BN,
objective, projection), the loss (which terms, which gradients), the optimiser or BatchNorm.
The TRADES reference follows the official `trades_loss` line by line, including its two
train-mode passes over the clean batch.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from act_jax import methods, models, optimizers, parallel
from act_jax.attacks import parts
from act_jax.methods import natural, pgd_at, trades
from act_jax.methods.common import AttackBudget
from act_jax.train_state import ModelState

from helpers import (
    layer_stats,
    nchw,
    nhwc,
    random_variables,
    record_bn_sample_counts,
    run_one_device_step,
    to_numpy,
    unbiased_running_var,
)

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed: the parity checks against PyTorch need it "
    "(pip install torch, or the 'torch' extra)")
F = torch.nn.functional

from act_jax.pytorch import act_step as torch_act_step  # noqa: E402  (needs torch, checked above)
from act_jax.pytorch import models as torch_models  # noqa: E402

LEARNING_RATE, WEIGHT_DECAY = 0.05, 5e-4
IMAGE_SHAPE, BATCH, NUM_CLASSES, WIDTH = (28, 28, 1), 8, 10, 4
EPS, STEP_SIZE, NUM_STEPS, BETA = 0.1, 0.02, 3, 6.0
# x' may differ where a gradient component is ~0 and its sign flips between frameworks.
MAX_DIFFERING_PIXEL_FRACTION = 1e-3
HYPERPARAMS = {
    "natural": natural.NaturalHyperparams(),
    "pgd_at": pgd_at.PGDATHyperparams(
        attack=AttackBudget(eps=EPS, step_size=STEP_SIZE, num_steps=NUM_STEPS)),
    "trades": trades.TradesHyperparams(
        beta=BETA, attack=AttackBudget(eps=EPS, step_size=STEP_SIZE, num_steps=NUM_STEPS)),
}
# Train-mode passes per step, each of which updates BatchNorm's running statistics.
BN_UPDATES = {"natural": 1, "pgd_at": 1, "trades": 3}


def optim_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(learning_rate=LEARNING_RATE, momentum=0.9,
                                        weight_decay=WEIGHT_DECAY, lr_decay_epochs=(1,),
                                        lr_decay_factor=0.2))


def torch_pgd(model, images, labels, start):
  """Madry et al.'s PGD on CE from a given start, the model in eval mode as in act_jax."""
  model.eval()
  adversarial = start.detach()
  for _ in range(NUM_STEPS):
    adversarial.requires_grad_(True)
    loss = F.cross_entropy(model(adversarial), labels)
    (gradient,) = torch.autograd.grad(loss, [adversarial])
    adversarial = adversarial.detach() + STEP_SIZE * gradient.sign()
    adversarial = torch.min(torch.max(adversarial, images - EPS), images + EPS).clamp(0.0, 1.0)
  model.train()
  return adversarial.detach()


def torch_trades_loss(model, x_natural, y, optimizer, x_adv_start):
  """The official `trades_loss` (L-inf branch), with the start passed in instead of drawn."""
  criterion_kl = torch.nn.KLDivLoss(reduction="sum")
  model.eval()
  batch_size = len(x_natural)
  x_adv = x_adv_start.detach()
  for _ in range(NUM_STEPS):
    x_adv.requires_grad_()
    with torch.enable_grad():
      loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1),
                             F.softmax(model(x_natural), dim=1))
    grad = torch.autograd.grad(loss_kl, [x_adv])[0]
    x_adv = x_adv.detach() + STEP_SIZE * torch.sign(grad.detach())
    x_adv = torch.min(torch.max(x_adv, x_natural - EPS), x_natural + EPS)
    x_adv = torch.clamp(x_adv, 0.0, 1.0)
  model.train()
  x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()
  optimizer.zero_grad()
  logits = model(x_natural)
  loss_natural = F.cross_entropy(logits, y)
  loss_robust = (1.0 / batch_size) * criterion_kl(F.log_softmax(model(x_adv), dim=1),
                                                  F.softmax(model(x_natural), dim=1))
  loss = loss_natural + BETA * loss_robust
  return loss, {"loss": loss, "ce": loss_natural, "kl": loss_robust}, x_adv


def torch_step(method, model, images, labels, start):
  """One step of `method` in PyTorch; the metrics and x' (None for natural training)."""
  optimizer = torch_act_step.sgd(model, LEARNING_RATE, WEIGHT_DECAY)
  model.train()
  adversarial = None
  if method == "trades":
    loss, metrics, adversarial = torch_trades_loss(model, images, labels, optimizer, start)
  else:
    if method == "pgd_at":
      adversarial = torch_pgd(model, images, labels, start)
    optimizer.zero_grad()
    loss = F.cross_entropy(model(images if adversarial is None else adversarial), labels)
    metrics = {"loss": loss, "ce": loss}
  loss.backward()
  optimizer.step()
  return {k: float(v) for k, v in metrics.items()}, adversarial


def jax_start_and_adversarial(method, state, batch, rng):
  """The step's attack start (from its own per-example keys) and its x'."""
  hp = HYPERPARAMS[method]

  def per_device(state, batch):
    images, labels = batch["image"], batch["label"]
    keys = parallel.example_rngs(rng, state.step, images.shape[0])
    if method == "pgd_at":
      return (parts.uniform_init(keys, images, EPS),
              pgd_at.adversarial_examples(state, images, labels, keys, hp.attack))
    return (parts.gaussian_init(keys, images, 0.001),
            trades.adversarial_examples(state, images, keys, hp.attack))

  mapped = jax.shard_map(per_device, mesh=parallel.make_mesh(jax.devices()[:1]),
                         in_specs=(parallel.REPLICATED, parallel.SHARDED),
                         out_specs=(parallel.SHARDED, parallel.SHARDED), check_vma=False)
  return jax.jit(mapped)(state, batch)


@pytest.fixture(scope="module", params=["natural", "pgd_at", "trades"])
def parity(request):
  method = request.param
  model = models.build_model("small_cnn", num_classes=NUM_CLASSES, base_width=WIDTH)
  tx = optimizers.sgd_with_coupled_weight_decay(
      optim_config(), optimizers.learning_rate_schedule(optim_config(), 10))
  variables = random_variables(model, IMAGE_SHAPE, seed=1)
  state = ModelState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                            batch_stats=variables["batch_stats"]).replace(
                                step=jnp.zeros((), jnp.int32))
  data = np.random.default_rng(0)
  batch = {"image": jnp.asarray(data.uniform(size=(BATCH, *IMAGE_SHAPE)), jnp.float32),
           "label": jnp.asarray(data.integers(0, NUM_CLASSES, BATCH), jnp.int32)}
  rng = jax.random.PRNGKey(7)
  start = adversarial = None
  if method != "natural":
    start, adversarial = jax_start_and_adversarial(method, state, batch, rng)
  old = to_numpy(state)
  new_state, metrics = run_one_device_step(state, batch, rng, hp=HYPERPARAMS[method],
                                           optim_config=optim_config(),
                                           step_fn=methods.get(method).train_step)
  torch_model = torch_models.load_flax_variables(
      torch_models.SmallCNN(NUM_CLASSES, width=WIDTH), old.params, old.batch_stats)
  counts = record_bn_sample_counts(torch_model)
  torch_metrics, torch_adversarial = torch_step(
      method, torch_model, nchw(batch["image"]),
      torch.from_numpy(np.array(batch["label"])).long(), None if start is None else nchw(start))
  model_name = methods.get(method).model_names[0]
  return dict(method=method, model=model_name, old=old, new=to_numpy(new_state),
              metrics=to_numpy(metrics), torch_model=torch_model, torch_metrics=torch_metrics,
              adversarial=None if adversarial is None else np.asarray(adversarial),
              torch_adversarial=torch_adversarial, counts=counts)


def test_losses_agree(parity):
  for part, value in parity["torch_metrics"].items():
    expected = parity["metrics"][f"{parity['model']}/{part}"]
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-7, err_msg=part)


def test_adversarial_examples_agree(parity):
  """The same attack from the same start: eval-mode BN, objective, sign steps, projection."""
  if parity["adversarial"] is None:
    pytest.skip("natural training has no attack")
  actual, expected = nhwc(parity["torch_adversarial"]), parity["adversarial"]
  difference = np.abs(actual - expected)
  assert (difference > 1e-6).mean() <= MAX_DIFFERING_PIXEL_FRACTION
  assert difference.max() <= 2 * EPS + 1e-6


def test_updated_params_agree(parity):
  """Gradients (through both KL arguments for TRADES), weight decay, momentum: same params."""
  params, _ = torch_models.torch_to_flax_variables(parity["torch_model"])
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6), params,
               parity["new"].params)
  moved = max(float(np.max(np.abs(n - o))) for n, o in zip(
      jax.tree.leaves(parity["new"].params), jax.tree.leaves(parity["old"].params), strict=True))
  assert moved > 1e-4  # the step really updated the parameters


def test_running_statistics_follow_every_train_mode_pass(parity):
  """TRADES updates BatchNorm's running statistics three times a step (x, x', x), as the
  official code's three train-mode passes do; the other methods once."""
  _, stats = torch_models.torch_to_flax_variables(parity["torch_model"])
  for path, n in parity["counts"].items():
    actual, expected, old = (layer_stats(tree, path) for tree in
                             (stats, parity["new"].batch_stats, parity["old"].batch_stats))
    np.testing.assert_allclose(actual["mean"], expected["mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        actual["var"], unbiased_running_var(old["var"], expected["var"], n,
                                            updates=BN_UPDATES[parity["method"]]),
        rtol=1e-5, atol=1e-6)
