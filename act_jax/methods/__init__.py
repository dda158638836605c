"""Training methods, chosen by `config.method`: natural, PGD-AT, TRADES and ACT.

Every method shares the models, data, optimiser, checkpoints, evaluator and parallel path;
what differs is its state (one model, or ACT's two), its per-device train step and its
hyperparameters. A single-model method keeps a one-model state (`ModelState`), not a dummy
second model. Each method names the models its state holds: "natural" for a model trained on
clean images, "robust" for one trained against an adversary.
"""

import dataclasses
from collections.abc import Callable
from types import ModuleType
from typing import Any

import ml_collections

from act_jax.methods import act, natural, pgd_at, trades
from act_jax.methods.common import AttackBudget
from act_jax.train_state import ModelState


@dataclasses.dataclass(frozen=True)
class Method:
  """A training method: what its state holds and how one step updates it.

  - `create_state(model, tx, rng, image_shape)`: the initial state;
  - `train_step(state, batch, rng, *, hp, learning_rate_fn) -> (state, metrics)`: per device;
  - `hyperparams(config, budget)`: the step's static settings from a config and, for a method
    that trains against an attack (`adversarial`), the attack's budget;
  - `models(state)`: model name -> `ModelState`, in `model_names` order;
  - `forward_passes(K)`: a step's work per example, in forward-pass equivalents, with a K-step
    training attack (for progress estimates and FLOP counts).
  """
  name: str
  model_names: tuple[str, ...]
  create_state: Callable[..., Any]
  train_step: Callable[..., Any]
  adversarial: bool
  hyperparams: Callable[..., Any]
  models: Callable[[Any], dict[str, ModelState]]
  forward_passes: Callable[[int], int]

  @property
  def default_model(self) -> str:
    """The model a user of this run most likely wants: the robust one where there is one."""
    return "robust" if "robust" in self.model_names else self.model_names[0]


  def build_hyperparams(self, config: ml_collections.ConfigDict, *,
                        unroll_attack: bool) -> Any:
    """The step's hyperparameters; `unroll_attack` (how attack loops compile, see
    `parallel.unrolls_attack_loops`) goes into the attack's budget, where there is one."""
    if not self.adversarial:
      return self.hyperparams(config)
    return self.hyperparams(config, AttackBudget.from_config(config, unroll=unroll_attack))


def _method(name: str, module: ModuleType, hyperparams: Any, *, adversarial: bool) -> Method:
  return Method(name=name, model_names=module.MODEL_NAMES, create_state=module.create_state,
                train_step=module.train_step, adversarial=adversarial,
                hyperparams=hyperparams.from_config, models=module.models,
                forward_passes=module.forward_passes)


METHODS = {
    "natural": _method("natural", natural, natural.NaturalHyperparams, adversarial=False),
    "pgd_at": _method("pgd_at", pgd_at, pgd_at.PGDATHyperparams, adversarial=True),
    "trades": _method("trades", trades, trades.TradesHyperparams, adversarial=True),
    "act": _method("act", act, act.ACTHyperparams, adversarial=True),
}
METHOD_NAMES = tuple(METHODS)


def get(name: str) -> Method:
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; allowed: {', '.join(METHOD_NAMES)}")
  return METHODS[name]
