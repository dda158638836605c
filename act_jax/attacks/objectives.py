"""What attacks ascend: per-example losses and the scalar objectives built from them.

Each objective is built from a `logits_fn(images) -> logits` closure, so it does not care which
model, mode or dtype produced the logits. All are sums or means over the batch of per-example
terms; since every example's loss depends only on its own input, the gradient for each example
is independent of the rest of the batch (and of how the batch is split across devices).

Per-example losses are functions `(logits [B, C], labels [B], targets [B] or None) -> [B]`,
larger meaning worse for the model; untargeted ones ignore `targets`.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from act_jax import losses

LogitsFn = Callable[[jax.Array], jax.Array]
LossFn = Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array]
ATTACK_LOSS_REDUCTIONS = ("reference", "mean")
# Croce & Hein's DLR denominators get this added so they never divide by zero.
DLR_EPSILON = 1e-12


def _true_logit(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]


def _max_other_logit(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """max_{j != y} z_j per example."""
  is_true = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.bool_)
  return jnp.max(jnp.where(is_true, -jnp.inf, logits), axis=-1)


def _require_targets(targets: jax.Array | None, name: str) -> jax.Array:
  if targets is None:
    raise ValueError(f"loss {name!r} is targeted: pass one target class per example")
  return targets


def _require_classes(logits: jax.Array, minimum: int, name: str) -> None:
  if logits.shape[-1] < minimum:
    raise ValueError(f"loss {name!r} needs at least {minimum} classes, got {logits.shape[-1]}")


def ce(logits: jax.Array, labels: jax.Array, targets: jax.Array | None = None) -> jax.Array:
  """CE(z, y): the untargeted PGD loss (Madry et al.)."""
  del targets
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def cw_margin(logits: jax.Array, labels: jax.Array, targets: jax.Array | None = None) -> jax.Array:
  """max_{j != y} z_j - z_y (Carlini & Wagner): positive exactly when the example is misclassified.
  """
  del targets
  logits = logits.astype(jnp.float32)
  return _max_other_logit(logits, labels) - _true_logit(logits, labels)


def dlr(logits: jax.Array, labels: jax.Array, targets: jax.Array | None = None) -> jax.Array:
  """-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3), the Difference of Logits Ratio (Croce & Hein).

  The CW margin divided by a spread of the logits, so it is invariant to shifting and rescaling
  them: a model cannot hide its gradient by making its logits large (pi sorts z descending).
  """
  del targets
  logits = logits.astype(jnp.float32)
  _require_classes(logits, 3, "dlr")
  ordered = jnp.sort(logits, axis=-1)
  margin = _true_logit(logits, labels) - _max_other_logit(logits, labels)
  return -margin / (ordered[:, -1] - ordered[:, -3] + DLR_EPSILON)


def targeted_ce(logits: jax.Array, labels: jax.Array,
                targets: jax.Array | None = None) -> jax.Array:
  """-CE(z, t): ascending it descends CE towards the target class t."""
  del labels
  targets = _require_targets(targets, "targeted_ce")
  return -optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def targeted_dlr(logits: jax.Array, labels: jax.Array,
                 targets: jax.Array | None = None) -> jax.Array:
  """-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), the targeted DLR loss of APGD-T."""
  targets = _require_targets(targets, "targeted_dlr")
  logits = logits.astype(jnp.float32)
  _require_classes(logits, 4, "targeted_dlr")
  ordered = jnp.sort(logits, axis=-1)
  margin = _true_logit(logits, labels) - _true_logit(logits, targets)
  return -margin / (ordered[:, -1] - 0.5 * (ordered[:, -3] + ordered[:, -4]) + DLR_EPSILON)


LOSSES: dict[str, LossFn] = {
    "ce": ce,
    "cw_margin": cw_margin,
    "dlr": dlr,
    "targeted_ce": targeted_ce,
    "targeted_dlr": targeted_dlr,
}
TARGETED_LOSSES = ("targeted_ce", "targeted_dlr")
UNTARGETED_LOSSES = tuple(name for name in LOSSES if name not in TARGETED_LOSSES)


def check_loss(name: str, allowed: tuple[str, ...]) -> LossFn:
  """The loss called `name`, if it is one of `allowed`."""
  if name not in allowed:
    raise ValueError(f"attack loss {name!r}; allowed: {', '.join(allowed)}")
  return LOSSES[name]


def misclassified(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Whether each example's prediction differs from its label: what robust accuracy counts."""
  return jnp.argmax(logits, axis=-1) != labels


def summed_objective(logits_fn: LogitsFn, loss_fn: LossFn, labels: jax.Array,
                     targets: jax.Array | None = None) -> Callable[[jax.Array], jax.Array]:
  """The scalar sum over the batch of a per-example loss.

  A sum, not a mean: each example's gradient is then exactly the gradient of its own loss,
  whatever the batch size, and step rules that normalise the gradient ignore the scale anyway.
  """

  def objective(images: jax.Array) -> jax.Array:
    return loss_fn(logits_fn(images).astype(jnp.float32), labels, targets).sum()

  return objective


def loss_and_gradient(logits_fn: LogitsFn, loss_fn: LossFn, labels: jax.Array,
                      targets: jax.Array | None = None
                      ) -> Callable[[jax.Array], tuple[jax.Array, jax.Array, jax.Array]]:
  """images -> (per-example loss [B], misclassified [B], gradient), from one forward/backward.

  Attacks that track their best point per example (APGD) need the loss and the prediction at
  every iterate as well as the gradient; this gets all three from a single model evaluation.
  """

  def objective(images: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    logits = logits_fn(images).astype(jnp.float32)
    per_example = loss_fn(logits, labels, targets)
    return per_example.sum(), (per_example, logits)

  gradient_fn = jax.grad(objective, has_aux=True)

  def evaluate(images: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    gradient, (per_example, logits) = gradient_fn(images)
    return per_example, misclassified(logits, labels), gradient

  return evaluate


def cross_entropy_objective(logits_fn: LogitsFn,
                            labels: jax.Array) -> Callable[[jax.Array], jax.Array]:
  """Summed CE: the untargeted PGD objective (sign steps make sum and mean equivalent)."""
  return summed_objective(logits_fn, ce, labels)


def act_objective(logits_fn: LogitsFn, labels: jax.Array, natural_logits: jax.Array, *,
                  alpha: float, reduction: str,
                  global_batch_size: int) -> Callable[[jax.Array], jax.Array]:
  """The ACT inner-maximisation loss (ACT spec, step 2).

  "reference": (1 - alpha) * CE_mean + alpha * KL_sum, exactly as the release: CE is averaged over
    the batch but KL (temperature 1, no T^2) is summed, so each example's CE weight is
    (1 - alpha) / B and the attack is driven almost entirely by the KL to the natural model.
  "mean": (1 - alpha) * CE_mean + alpha * KL_mean, the balanced variant.

  B is the *global* batch size: the mean is taken as a sum divided by it, so a data-parallel
  replica that sees B / n examples computes exactly the single-device attack.
  """
  if reduction not in ATTACK_LOSS_REDUCTIONS:
    raise ValueError(f"attack loss reduction {reduction!r}; allowed: "
                     f"{', '.join(ATTACK_LOSS_REDUCTIONS)}")
  kl_weight = alpha if reduction == "reference" else alpha / global_batch_size

  def objective(images: jax.Array) -> jax.Array:
    logits = logits_fn(images).astype(jnp.float32)
    ce_sum = optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()
    kl_sum = losses.per_example_kl(logits, natural_logits).sum()
    return (1.0 - alpha) * ce_sum / global_batch_size + kl_weight * kl_sum

  return objective


def trades_objective(logits_fn: LogitsFn,
                     clean_logits: jax.Array) -> Callable[[jax.Array], jax.Array]:
  """TRADES' inner maximisation: sum_batch KL(softmax(f(x)) || softmax(f(x'))) (Zhang et al.).

  Summed over the batch, as the official code's `KLDivLoss(size_average=False)`; `clean_logits`
  are f(x) from the same (eval-mode) model, a constant target.
  """
  clean_logits = jax.lax.stop_gradient(clean_logits)

  def objective(images: jax.Array) -> jax.Array:
    return losses.kl_divergence(logits_fn(images), clean_logits).sum()

  return objective
