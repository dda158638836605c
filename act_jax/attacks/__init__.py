"""Attacks assembled from the parts in `parts` and `objectives`."""

from act_jax.attacks.act_attack import act_training_attack
from act_jax.attacks.objectives import ATTACK_LOSS_REDUCTIONS
from act_jax.attacks.pgd import pgd_linf

__all__ = ["ATTACK_LOSS_REDUCTIONS", "act_training_attack", "pgd_linf"]
