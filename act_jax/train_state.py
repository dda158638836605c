"""The training state: both ACT models, each with its own optimiser state.

The state is a plain pytree (no methods, no closures), so it can be donated to the compiled step,
sharded by `parallel` and saved by orbax as it is. The model and optimiser *definitions* live in
the step's closure, not in the state.
"""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class ModelState:
  """One model's trainable parameters, BatchNorm running statistics and optimiser state."""
  params: Any
  batch_stats: Any
  opt_state: optax.OptState


@flax.struct.dataclass
class ACTState:
  """`natural` is G (trained on clean images), `robust` is F (trained on adversarial images)."""
  step: jax.Array
  natural: ModelState
  robust: ModelState


def init_model_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                     image_shape: tuple[int, int, int]) -> ModelState:
  """Initialises one model on a dummy batch and its optimiser state."""
  variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  params = variables["params"]
  return ModelState(params=params, batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params))


def create_act_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                     image_shape: tuple[int, int, int]) -> ACTState:
  """Two independently initialised copies of the same architecture, as in the ACT release."""
  natural_rng, robust_rng = jax.random.split(rng)
  return ACTState(step=jnp.zeros((), jnp.int32),
                  natural=init_model_state(model, tx, natural_rng, image_shape),
                  robust=init_model_state(model, tx, robust_rng, image_shape))
