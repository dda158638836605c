"""Training losses: cross-entropy, the (temperature-scaled) KL of ACT and TRADES' KL term.

Every loss is computed in float32 whatever the model's compute dtype, so that bf16 training keeps
exact softmax/log-softmax arithmetic.
"""

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy averaged over the batch: CE(z, y) in the spec."""
  logits = logits.astype(jnp.float32)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def kl_divergence(student_logits: jax.Array, teacher_logits: jax.Array,
                  temperature: float = 1.0) -> jax.Array:
  """KL(softmax(t/T) || softmax(s/T)) per example, differentiable in both arguments.

  What PyTorch's `KLDivLoss(log_softmax(s / T), softmax(t / T))` sums per example.
  """
  teacher = teacher_logits.astype(jnp.float32) / temperature
  student = student_logits.astype(jnp.float32) / temperature
  teacher_log_probs = jax.nn.log_softmax(teacher, axis=-1)
  student_log_probs = jax.nn.log_softmax(student, axis=-1)
  return jnp.sum(jnp.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1)


def per_example_kl(student_logits: jax.Array, teacher_logits: jax.Array,
                   temperature: float = 1.0) -> jax.Array:
  """`kl_divergence` with no gradient through the teacher.

  The teacher is always the *other* model in ACT, so stopping its gradient here makes it
  impossible for one model's loss to leak into the other model's parameters.
  """
  return kl_divergence(student_logits, jax.lax.stop_gradient(teacher_logits), temperature)


def distillation_kl(student_logits: jax.Array, teacher_logits: jax.Array,
                    temperature: float) -> jax.Array:
  """KL_T(s || t) = T^2 / B * sum_batch KL(softmax(t/T) || softmax(s/T)).

  The T^2 factor keeps the gradient magnitude of the soft term independent of T (Hinton et al.),
  as the ACT release does with `KLDivLoss(size_average=False) * T^2 / B`.
  """
  kl = per_example_kl(student_logits, teacher_logits, temperature)
  return temperature**2 * kl.mean()


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """The fraction of examples whose largest logit is the label's (a metric, not a loss)."""
  return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def act_model_loss(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array, *,
                   alpha: float, temperature: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(1 - alpha) * CE(student, y) + alpha * KL_T(student || stop_grad(teacher)).

  This is L_G (student = natural, teacher = robust) and L_F (student = robust, teacher =
  natural) of the ACT spec, step 4. Returns the total and its parts for logging.
  """
  ce = cross_entropy(student_logits, labels)
  kl = distillation_kl(student_logits, teacher_logits, temperature)
  total = (1.0 - alpha) * ce + alpha * kl
  return total, {"loss": total, "ce": ce, "kl": kl, "accuracy": accuracy(student_logits, labels)}


def trades_loss(clean_logits: jax.Array, adversarial_logits: jax.Array, labels: jax.Array, *,
                beta: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """CE(f(x), y) + beta / B * sum_batch KL(softmax(f(x)) || softmax(f(x'))) (Zhang et al. 2019).

  As the official TRADES code, the KL is not detached from the clean logits: its gradient
  flows through f(x) as well as through f(x'). Returns the total and its parts for logging;
  "accuracy" is on the clean inputs.
  """
  ce = cross_entropy(clean_logits, labels)
  kl = kl_divergence(adversarial_logits, clean_logits).mean()
  total = ce + beta * kl
  return total, {"loss": total, "ce": ce, "kl": kl, "accuracy": accuracy(clean_logits, labels)}
