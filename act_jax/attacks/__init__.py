"""Attacks assembled from the parts in `parts`, `objectives` and `targets`.

Every attack is a pure, jit-able function of (logits_fn, images, labels[, example_rngs]) that
returns adversarial images; all loops run in-graph and every example is attacked independently.
`specs` parses attack names ("pgd20", "apgd-t", ...) into specs that build and describe them.
"""

from act_jax.attacks.act_attack import act_training_attack
from act_jax.attacks.apgd_attack import apgd, apgd_checkpoints, apgd_targeted
from act_jax.attacks.fab_attack import fab_targeted
from act_jax.attacks.fgsm_attack import fgsm
from act_jax.attacks.objectives import ATTACK_LOSS_REDUCTIONS, LOSSES
from act_jax.attacks.pgd_attack import pgd
from act_jax.attacks.square_attack import square
from act_jax.attacks.trades_attack import trades_training_attack

__all__ = ["ATTACK_LOSS_REDUCTIONS", "LOSSES", "act_training_attack", "apgd", "apgd_checkpoints",
           "apgd_targeted", "fab_targeted", "fgsm", "pgd", "square", "trades_training_attack"]
