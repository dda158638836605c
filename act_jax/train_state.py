"""The training state: each model is a Flax `TrainState` that also carries BatchNorm statistics.

A state is a plain pytree: the model's `apply_fn` and the optax transformation are static
fields, so the state can be donated to the compiled step, sharded by `parallel` and saved by
orbax as it is, and a step needs nothing but the state to run the model and update it.
"""

import functools
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

# (variables, images) -> logits
ApplyFn = Callable[[Any, jax.Array], jax.Array]


class ModelState(train_state.TrainState):
  """One model: step, params, optimiser state (from `TrainState`) and BatchNorm statistics."""
  batch_stats: Any

  @property
  def variables(self) -> dict[str, Any]:
    return {"params": self.params, "batch_stats": self.batch_stats}


def eval_mode_apply(apply_fn: Callable[..., jax.Array]) -> ApplyFn:
  """`(variables, images) -> logits` with running BatchNorm statistics and no state update.

  Every attack and every evaluation runs a model this way (ACT spec, step 2 and "Evaluation").
  """
  return functools.partial(apply_fn, train=False)


def eval_mode_logits(model_state: ModelState) -> Callable[[jax.Array], jax.Array]:
  """`images -> logits` of this model in eval mode."""
  return functools.partial(eval_mode_apply(model_state.apply_fn), model_state.variables)


@flax.struct.dataclass
class ACTState:
  """`natural` is G (trained on clean images), `robust` is F (trained on adversarial images)."""
  natural: ModelState
  robust: ModelState

  @property
  def step(self) -> jax.Array:
    return self.natural.step


def init_model_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                     image_shape: tuple[int, int, int]) -> ModelState:
  """Initialises one model on a dummy batch and its optimiser state."""
  variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  state = ModelState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                            batch_stats=variables.get("batch_stats", {}))
  return state.replace(step=jnp.zeros((), jnp.int32))  # a strong int32 array, as restored


def create_act_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                     image_shape: tuple[int, int, int]) -> ACTState:
  """Two independently initialised copies of the same architecture, as in the ACT release."""
  natural_rng, robust_rng = jax.random.split(rng)
  return ACTState(natural=init_model_state(model, tx, natural_rng, image_shape),
                  robust=init_model_state(model, tx, robust_rng, image_shape))
