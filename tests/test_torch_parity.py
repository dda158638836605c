"""One act_jax ACT step against the PyTorch baseline in act_jax/pytorch/, number for number.

Both frameworks start from the same weights, running statistics, batch and attack noise, so
any disagreement beyond float32 rounding is a semantic difference between them: in the
attack (eval-mode BN, reduction, projection), the losses, the optimiser or BatchNorm.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from act_jax import attacks, models, optimizers, parallel
from act_jax.attacks import parts
from act_jax.methods.act import ACTHyperparams
from act_jax.methods.common import AttackBudget
from act_jax.train_state import ACTState, ModelState, eval_mode_logits

from helpers import (
    layer_stats,
    nchw,
    nhwc,
    random_variables,
    record_bn_sample_counts,
    relative_difference,
    run_one_device_step,
    to_numpy,
    unbiased_running_var,
)

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed: the parity checks against the PyTorch baseline "
    "in act_jax/pytorch/ need it (pip install torch, or the 'torch' extra)")

from act_jax.pytorch import act_step as torch_act_step  # noqa: E402  (needs torch, checked above)
from act_jax.pytorch import models as torch_models  # noqa: E402

HP = ACTHyperparams(natural_alpha=0.9, robust_alpha=0.9, temperature=4.0,
                    attack_loss_reduction="reference",
                    attack=AttackBudget(eps=0.1, step_size=0.02, num_steps=3))
LEARNING_RATE = 0.05
WEIGHT_DECAY = 5e-4
IMAGE_SHAPE = (28, 28, 1)
BATCH = 8
NUM_CLASSES = 10
WIDTH = 4
# x' may differ where a gradient component is ~0 and its sign flips between frameworks.
MAX_DIFFERING_PIXEL_FRACTION = 1e-3


def optim_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(learning_rate=LEARNING_RATE, momentum=0.9,
                                        weight_decay=WEIGHT_DECAY, lr_decay_epochs=(1,),
                                        lr_decay_factor=0.2))


def jax_step(state, batch, rng):
  """One act_jax step on one device, through the same path as training."""
  return run_one_device_step(state, batch, rng, hp=HP, optim_config=optim_config())


def jax_noise_and_adversarial(state, batch, rng):
  """The N(0, I) draws behind the step's x + 0.001 * noise start, and the step's x'.

  Recomputed with the step's own per-example keys (`example_rngs` under the same one-device
  mesh), so the noise is bit-identical to what the step used.
  """

  def per_device(state, batch):
    images, labels = batch["image"], batch["label"]
    keys = parallel.example_rngs(rng, state.step, images.shape[0])
    noise = parts.gaussian_init(keys, jnp.zeros_like(images), 1.0)
    natural_logits, _ = state.natural.apply_fn(state.natural.variables, images, train=True,
                                               mutable=["batch_stats"])
    adversarial = attacks.act_training_attack(
        eval_mode_logits(state.robust), images, labels,
        natural_logits, keys, eps=HP.attack.eps, step_size=HP.attack.step_size,
        num_steps=HP.attack.num_steps, alpha=HP.robust_alpha, reduction=HP.attack_loss_reduction,
        global_batch_size=BATCH)
    return noise, adversarial

  mapped = jax.shard_map(per_device, mesh=parallel.make_mesh(jax.devices()[:1]),
                         in_specs=(parallel.REPLICATED, parallel.SHARDED),
                         out_specs=(parallel.SHARDED, parallel.SHARDED), check_vma=False)
  return jax.jit(mapped)(state, batch)


def torch_step(state, batch, noise):
  """One step of the PyTorch baseline from the same state, batch and noise."""
  pair = []
  for model_state in (state.natural, state.robust):
    model = torch_models.SmallCNN(NUM_CLASSES, width=WIDTH)
    pair.append(torch_models.load_flax_variables(model, to_numpy(model_state.params),
                                                 to_numpy(model_state.batch_stats)))
  counts = [record_bn_sample_counts(model) for model in pair]
  trainer = torch_act_step.TorchACT(*pair, HP, learning_rate=LEARNING_RATE,
                                    weight_decay=WEIGHT_DECAY)
  labels = torch.from_numpy(np.array(batch["label"])).long()
  output = trainer.step(nchw(batch["image"]), labels, noise=nchw(noise))
  return trainer, output, counts


def model_state(model, tx, seed: int) -> ModelState:
  """What `create_act_state` holds for one model, with random variables (see above)."""
  variables = random_variables(model, IMAGE_SHAPE, seed)
  state = ModelState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                            batch_stats=variables["batch_stats"])
  return state.replace(step=jnp.zeros((), jnp.int32))


@pytest.fixture(scope="module")
def parity():
  model = models.build_model("small_cnn", num_classes=NUM_CLASSES, base_width=WIDTH)
  tx = optimizers.sgd_with_coupled_weight_decay(
      optim_config(), optimizers.learning_rate_schedule(optim_config(), 10))
  state = ACTState(natural=model_state(model, tx, seed=1), robust=model_state(model, tx, seed=2))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.uniform(size=(BATCH, *IMAGE_SHAPE)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, NUM_CLASSES, BATCH), jnp.int32)}
  step_rng = jax.random.PRNGKey(7)
  noise, jax_adversarial = jax_noise_and_adversarial(state, batch, step_rng)
  old_state = to_numpy(state)
  new_state, metrics = jax_step(state, batch, step_rng)
  trainer, output, counts = torch_step(old_state, batch, noise)
  return dict(old=old_state, new=to_numpy(new_state), metrics=to_numpy(metrics),
              jax_adversarial=np.asarray(jax_adversarial), trainer=trainer, output=output,
              counts=counts)


def test_losses_agree(parity):
  """Both models' loss and its parts (accuracy too), from the same snapshot and the same x'."""
  for model_name in ("natural", "robust"):
    for part in ("loss", "ce", "kl", "accuracy"):
      key = f"{model_name}/{part}"
      expected = parity["metrics"][key]
      actual = parity["output"].metrics[key].item()
      print(f"{key}: jax {float(expected):.8f} torch {actual:.8f} "
            f"rel diff {relative_difference(actual, expected):.2e}")
      np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-7, err_msg=key)


def test_adversarial_examples_agree(parity):
  """Eval-mode attack, reference reduction, sign steps and projection: the same x'."""
  expected = parity["jax_adversarial"]
  actual = nhwc(parity["output"].adversarial)
  difference = np.abs(actual - expected)
  differing = difference > 1e-6
  print(f"x': {differing.mean():.2e} of pixels differ ({differing.sum()} of {differing.size}); "
        f"max |diff| elsewhere {np.max(difference[~differing], initial=0.0):.2e}")
  assert differing.mean() <= MAX_DIFFERING_PIXEL_FRACTION
  # A flipped sign moves a pixel by at most 2 * step per step, and the projection bounds it.
  budget = HP.attack
  assert difference.max() <= min(2 * budget.step_size * budget.num_steps, 2 * budget.eps) + 1e-6


def test_updated_params_agree(parity):
  """Gradients, coupled weight decay and momentum SGD: the same parameters after the step."""
  for model_name, module in (("natural", parity["trainer"].natural),
                             ("robust", parity["trainer"].robust)):
    params, _ = torch_models.torch_to_flax_variables(module)
    expected = getattr(parity["new"], model_name).params
    old = getattr(parity["old"], model_name).params
    worst = max(jax.tree.leaves(jax.tree.map(
        lambda a, e: float(np.max(np.abs(a - e))), params, expected)))
    step = max(jax.tree.leaves(jax.tree.map(
        lambda e, o: float(np.max(np.abs(e - o))), expected, old)))
    print(f"{model_name} params: max |torch - jax| {worst:.2e} (largest update {step:.2e})")
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6), params,
                 expected)


def test_running_statistics_agree(parity):
  """Means match directly; torch averages in the unbiased batch variance, flax the biased one."""
  uncorrected = []
  for model_name, module, counts in (("natural", parity["trainer"].natural, parity["counts"][0]),
                                     ("robust", parity["trainer"].robust, parity["counts"][1])):
    _, stats = torch_models.torch_to_flax_variables(module)
    expected = getattr(parity["new"], model_name).batch_stats
    old = getattr(parity["old"], model_name).batch_stats
    for path, n in counts.items():
      actual_layer, expected_layer, old_layer = (layer_stats(tree, path)
                                                 for tree in (stats, expected, old))
      np.testing.assert_allclose(actual_layer["mean"], expected_layer["mean"], rtol=1e-5,
                                 atol=1e-6, err_msg=f"{model_name} {path} mean")
      unbiased = unbiased_running_var(old_layer["var"], expected_layer["var"], n)
      corrected_difference = relative_difference(actual_layer["var"], unbiased)
      uncorrected.append(relative_difference(actual_layer["var"], expected_layer["var"]))
      print(f"{model_name} {path} (n={n}): var rel diff {corrected_difference:.2e} with the "
            f"n/(n-1) factor, {uncorrected[-1]:.2e} without")
      np.testing.assert_allclose(actual_layer["var"], unbiased, rtol=1e-5, atol=1e-6,
                                 err_msg=f"{model_name} {path} var")
  # Guards the comparison: all 2 x 4 BN layers were compared, and at this tolerance the check
  # does tell the two variance conventions apart.
  assert len(uncorrected) == 8
  assert max(uncorrected) > 1e-5


def resnet_setup(name: str, image_size: int, dtype: jnp.dtype):
  """A flax ResNet (base width 4) with random variables, its torch twin and 2 images."""
  model = models.build_model(name, num_classes=NUM_CLASSES, base_width=WIDTH, dtype=dtype)
  image_shape = (image_size, image_size, 3)
  variables = jax.tree.map(lambda v: v.astype(dtype), random_variables(model, image_shape, 3))
  images = np.random.default_rng(4).uniform(size=(2, *image_shape)).astype(dtype)
  torch_model = torch_models.load_flax_variables(
      torch_models.build_model(name, num_classes=NUM_CLASSES, base_width=WIDTH),
      to_numpy(variables["params"]), to_numpy(variables["batch_stats"]))
  return model, variables, jnp.asarray(images), torch_model


RESNETS = [("resnet18_cifar", 32), ("resnet50_imagenet", 64)]


@pytest.mark.parametrize("name, image_size", RESNETS)
def test_resnet_eval_forward_agrees(name, image_size):
  """The converter and the torch ResNets: the same eval-mode logits in float32."""
  model, variables, images, torch_model = resnet_setup(name, image_size, jnp.float32)
  with torch.no_grad():
    actual = torch_model.eval()(nchw(images)).numpy()
  expected = np.asarray(jax.jit(functools.partial(model.apply, train=False))(variables, images))
  scale = float(np.abs(expected).max())
  print(f"{name} eval: max |torch - jax| {np.abs(actual - expected).max():.2e} "
        f"(logits up to {scale:.1f})")
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * max(scale, 1.0))


@pytest.mark.parametrize("name, image_size", RESNETS)
def test_resnet_train_forward_agrees(name, image_size):
  """Train-mode logits and BN updates of the ResNets, in float64.

  With 2 images, the last stage normalises over a handful of values per channel, so in
  float32 rounding is amplified to ~4e-4 in ResNet-50's logits (torch float32 against torch
  float64 differs as much as torch against flax); float64 leaves only the final float32 cast.
  """
  with jax.enable_x64(True):
    model, variables, images, torch_model = resnet_setup(name, image_size, jnp.float64)
    expected, updates = jax.jit(functools.partial(model.apply, train=True,
                                                  mutable=["batch_stats"]))(variables, images)
    expected, updates = np.asarray(expected), to_numpy(updates["batch_stats"])
  counts = record_bn_sample_counts(torch_model)
  with torch.no_grad():
    actual = torch_model.double().train()(nchw(images)).numpy()
  assert len(counts) == len(jax.tree.leaves(updates)) // 2  # every BN layer is compared
  print(f"{name} train: max |torch - jax| {np.abs(actual - expected).max():.2e}")
  np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)
  _, stats = torch_models.torch_to_flax_variables(torch_model)
  old = to_numpy(variables["batch_stats"])
  for path, n in counts.items():
    actual_layer, expected_layer, old_layer = (layer_stats(tree, path)
                                               for tree in (stats, updates, old))
    np.testing.assert_allclose(actual_layer["mean"], expected_layer["mean"], rtol=1e-6,
                               atol=1e-7, err_msg=f"{path} mean")
    np.testing.assert_allclose(actual_layer["var"],
                               unbiased_running_var(old_layer["var"], expected_layer["var"], n),
                               rtol=1e-6, atol=1e-7, err_msg=f"{path} var")
