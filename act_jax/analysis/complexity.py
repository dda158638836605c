"""The Fisher-Rao norm of a classifier (Liang, Poggio, Rakhlin and Stokes, AISTATS 2019).

||theta||_fr^2 = <theta, F(theta) theta>, with F the Fisher information of the model's own
predictive distribution: E_x E_{y ~ p_theta(.|x)} <theta, grad_theta log p_theta(y|x)>^2.

With logits f and u = J_theta f . theta (the change of the logits along theta itself, one
forward-mode product), <theta, grad log p(y|x)> = u_y - sum_c p_c u_c, so the inner
expectation over y is exactly the variance of u under p:

    ||theta||_fr^2 = E_x [ sum_c p_c u_c^2 - (sum_c p_c u_c)^2 ].

No label is sampled. For a linear softmax model f = W x + b, u = f, the closed form the tests
check. BatchNorm (in eval mode here) breaks the homogeneity identities of ReLU networks, so u is
computed exactly rather than assumed.

The direction theta enters as its own input, a copy of the parameters, never as the parameters
themselves. Given the very same value as primal and tangent inside one `jax.jit`, XLA:CPU
returned a wrong u for the small CNN, whose max-pool is a reshape and `max` (measured: up to
1.37 off eager `jax.jvp`, which central finite differences confirm; `nn.max_pool`, or the
tangent as a separate input, agree with eager to 1e-6). `tests/test_analysis.py` pins it.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

# (params, images) -> logits
LogitsFn = Callable[[Any, jax.Array], jax.Array]


def fisher_rao_per_example(logits_fn: LogitsFn) -> Callable[[Any, Any, jax.Array], jax.Array]:
  """`(params, direction, images) -> Var_{c ~ p}(u_c)` per example, u the derivative of the
  logits along `direction`; the Fisher-Rao norm's square is its mean with `direction` a copy of
  `params`."""
  def per_example(params, direction, images):
    logits, along = jax.jvp(lambda p: logits_fn(p, images), (params,), (direction,))
    probabilities = jax.nn.softmax(logits.astype(jnp.float32))
    mean = jnp.sum(probabilities * along, axis=-1)
    return jnp.sum(probabilities * along**2, axis=-1) - mean**2
  return per_example


def fisher_rao_norm(per_example_values: jax.Array) -> float:
  """The norm from the per-example values (their mean is its square)."""
  return float(jnp.sqrt(jnp.maximum(jnp.mean(per_example_values), 0.0)))
