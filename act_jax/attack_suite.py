"""Attack names as the evaluation CLI takes them, and the attack each name builds.

A name says what is run; the threat model (eps, eps_l2) and the step-size rule come from
`SuiteSettings`, so the same names mean the same attacks at every eps of a sweep.
"""

import dataclasses
import functools
import re
from typing import Callable

import jax

from act_jax import attacks

# attack(logits_fn, images, labels, example_rngs) -> adversarial images
Attack = Callable[[Callable[[jax.Array], jax.Array], jax.Array, jax.Array, jax.Array], jax.Array]

FIXED_NAMES = ("clean", "fgsm", "apgd-ce", "apgd-dlr", "apgd-t", "autoattack", "transfer")
PATTERNS = ("pgd<K>", "pgd<K>-l2", "pgd<K>-targeted", "pgd<K>-ll", "cw<K>")
# AutoAttack's "standard" composite is APGD-CE, APGD-T, FAB-T and Square; FAB-T and Square are not
# implemented here, so "autoattack" is the per-example AND of its two gradient-based members.
COMPOSITES = {"autoattack": ("apgd-ce", "apgd-t")}
TRANSFER_STEPS = 20
APGD_STEPS = 100
_PGD = re.compile(r"^pgd(?P<steps>[1-9][0-9]*)(?P<variant>-l2|-targeted|-ll)?$")
_CW = re.compile(r"^cw(?P<steps>[1-9][0-9]*)$")


@dataclasses.dataclass(frozen=True)
class SuiteSettings:
  """The threat model and step rule shared by every attack of one evaluation.

  PGD-K takes K steps of `pgd_travel * eps / K`: its total travel is fixed whatever K is, so
  PGD-100 is a finer, not a longer-reaching, PGD-20. The default travel is the run's own
  evaluation PGD (config.eval.step_size * num_steps / eps), so "pgd20" at the run's eps is the
  PGD-20 that training reported.
  """
  eps: float
  eps_l2: float
  pgd_travel: float = 2.5
  restarts: int = 1
  apgd_steps: int = APGD_STEPS


def valid_names_message() -> str:
  return ", ".join(FIXED_NAMES + PATTERNS)


def parse_attack_names(text: str) -> tuple[str, ...]:
  """Comma-separated names -> a tuple without duplicates, in order; raises naming a bad one."""
  names = tuple(dict.fromkeys(name.strip().lower() for name in text.split(",") if name.strip()))
  if not names:
    raise ValueError(f"no attacks given; valid: {valid_names_message()}")
  for name in names:
    if name not in FIXED_NAMES and not _PGD.match(name) and not _CW.match(name):
      raise ValueError(f"unknown attack {name!r}; valid: {valid_names_message()}")
  return names


def white_box_members(names: tuple[str, ...]) -> tuple[str, ...]:
  """The single white-box attacks to run for `names`: composites expand, clean/transfer drop."""
  members = []
  for name in names:
    for member in COMPOSITES.get(name, (name,)):
      if member not in ("clean", "transfer") and member not in members:
        members.append(member)
  return tuple(members)


def _pgd_step(settings: SuiteSettings, eps: float, num_steps: int) -> float:
  return settings.pgd_travel * eps / num_steps


def build_attack(name: str, settings: SuiteSettings) -> Attack:
  """The white-box attack `name` under `settings` (not for "clean", "transfer" or composites)."""
  eps, restarts = settings.eps, settings.restarts
  if name == "fgsm":
    return lambda logits_fn, images, labels, rngs: attacks.fgsm(logits_fn, images, labels,
                                                                eps=eps)
  if name in ("apgd-ce", "apgd-dlr"):
    return functools.partial(attacks.apgd, eps=eps, num_steps=settings.apgd_steps,
                             loss=name.split("-")[1], restarts=restarts)
  if name == "apgd-t":
    return functools.partial(attacks.apgd_targeted, eps=eps, num_steps=settings.apgd_steps,
                             restarts=restarts)
  if match := _CW.match(name):
    steps = int(match["steps"])
    return functools.partial(attacks.pgd, eps=eps, step_size=_pgd_step(settings, eps, steps),
                             num_steps=steps, loss="cw_margin", restarts=restarts)
  if match := _PGD.match(name):
    steps, variant = int(match["steps"]), match["variant"]
    if variant == "-l2":
      return functools.partial(attacks.pgd, eps=settings.eps_l2, norm="l2",
                               step_size=_pgd_step(settings, settings.eps_l2, steps),
                               num_steps=steps, restarts=restarts)
    target = {"-targeted": "random", "-ll": "least_likely"}.get(variant)
    return functools.partial(attacks.pgd, eps=eps, step_size=_pgd_step(settings, eps, steps),
                             num_steps=steps, target=target, restarts=restarts)
  raise ValueError(f"{name!r} is not a single white-box attack; valid: {valid_names_message()}")


def build_transfer_attack(settings: SuiteSettings) -> Attack:
  """PGD-20 under the same rule as "pgd20", crafted on a source model (black-box transfer)."""
  return build_attack(f"pgd{TRANSFER_STEPS}", settings)


def describe(name: str, settings: SuiteSettings) -> str:
  """One line for the results: what `name` ran."""
  eps = f"eps={settings.eps:.4g}"
  if name == "clean":
    return "no attack"
  if name == "fgsm":
    return f"FGSM, L-inf {eps}"
  if name in COMPOSITES:
    return f"per-example AND of {', '.join(COMPOSITES[name])} (AutoAttack's gradient-based part)"
  if name == "transfer":
    return (f"PGD-{TRANSFER_STEPS} crafted on the run's other model, L-inf {eps} "
            "(black-box transfer)")
  if name.startswith("apgd"):
    kind = {"apgd-ce": "APGD-CE", "apgd-dlr": "APGD-DLR",
            "apgd-t": "APGD-T (targeted DLR, 9 target classes)"}[name]
    return f"{kind}, {settings.apgd_steps} steps, L-inf {eps}, {settings.restarts} restart(s)"
  if match := _CW.match(name):
    steps = int(match["steps"])
    return (f"PGD-{steps} on the CW margin, L-inf {eps}, step "
            f"{_pgd_step(settings, settings.eps, steps):.4g}")
  match = _PGD.match(name)
  steps, variant = int(match["steps"]), match["variant"]
  if variant == "-l2":
    return (f"PGD-{steps}, L2 eps={settings.eps_l2:.4g}, step "
            f"{_pgd_step(settings, settings.eps_l2, steps):.4g}, CE")
  kind = {"-targeted": ", targeted (random class)", "-ll": ", targeted (least-likely class)"}
  return (f"PGD-{steps}, L-inf {eps}, step {_pgd_step(settings, settings.eps, steps):.4g}, "
          f"uniform start, CE{kind.get(variant, '')}")
