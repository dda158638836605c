"""The standard AutoAttack built from torchattacks 3.5.1, with the original's settings.

The independent implementation that act-jax's attacks are compared with, for parity (tests)
and speed (`benchmarks.attack_throughput`). torchattacks' own `AutoAttack(version="standard")`
cannot serve: it builds APGD, APGD-T and FAB with 10 iterations where the original (Croce &
Hein's `autoattack` package, which RobustBench runs) uses 100 (torchattacks issue #196), and its
Square rescales the p schedule to the query budget (`resc_schedule=True`) where the original does
not. So each attack is built here with the original's values, and `torchattacks.MultiAttack`
cascades them (each attack on the examples the ones before left correct).

torchattacks 3.5.1 declares torchvision and an old requests as dependencies, though these four
attacks need neither: install it with `pip install --no-deps torchattacks==3.5.1`.
"""

from typing import Any

STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")


def standard_attacks(model: Any, *, eps: float, num_classes: int, apgd_steps: int = 100,
                     fab_steps: int = 100, square_queries: int = 5000,
                     seed: int = 0) -> dict[str, Any]:
  """AutoAttack's four L-inf attacks on `model` (NCHW images in [0, 1]), by act-jax's names."""
  import torchattacks

  return {
      "apgd-ce": torchattacks.APGD(model, norm="Linf", eps=eps, steps=apgd_steps, n_restarts=1,
                                   seed=seed, loss="ce", rho=0.75),
      "apgd-t": torchattacks.APGDT(model, norm="Linf", eps=eps, steps=apgd_steps, n_restarts=1,
                                   seed=seed, n_classes=num_classes, rho=0.75),
      "fab-t": torchattacks.FAB(model, norm="Linf", eps=eps, steps=fab_steps, n_restarts=1,
                                alpha_max=0.1, eta=1.05, beta=0.9, multi_targeted=True,
                                n_classes=num_classes, seed=seed),
      "square": torchattacks.Square(model, norm="Linf", eps=eps, n_queries=square_queries,
                                    n_restarts=1, p_init=0.8, loss="margin",
                                    resc_schedule=False, seed=seed),
  }


def cascade(attacks: dict[str, Any]) -> Any:
  """The attacks in AutoAttack's order as one torchattacks `MultiAttack`."""
  import torchattacks

  return torchattacks.MultiAttack([attacks[name] for name in STAGES if name in attacks])
