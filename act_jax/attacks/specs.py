"""Attack names, parsed once into a spec that both builds and describes the attack.

A name says what is run ("pgd20", "apgd-t", "autoattack", ...); the threat model (eps, eps_l2),
the step-size rule and the loop style come from `AttackSettings`, so the same names mean the
same attacks at every eps of a sweep.
"""

import dataclasses
import functools
import re
from collections.abc import Callable
from typing import Any

import jax

from act_jax.attacks import parts
from act_jax.attacks.apgd_attack import SteppedApgd, apgd, apgd_targeted
from act_jax.attacks.fab_attack import SteppedFab, fab_targeted
from act_jax.attacks.fgsm_attack import fgsm
from act_jax.attacks.pgd_attack import pgd
from act_jax.attacks.square_attack import square

# attack(logits_fn, images, labels, example_rngs) -> adversarial images
Attack = Callable[[Callable[[jax.Array], jax.Array], jax.Array, jax.Array, jax.Array], jax.Array]

APGD_STEPS = 100
FAB_STEPS = 100
SQUARE_QUERIES = 5000
TRANSFER_STEPS = 20
NUM_APGD_TARGETS = 9
NUM_FAB_TARGETS = 9
# The standard AutoAttack (Croce & Hein 2020), as RobustBench runs it: each member attacks the
# examples that the ones before it left robust.
STANDARD_AUTOATTACK = ("apgd-ce", "apgd-t", "fab-t", "square")
PATTERNS = ("pgd<K>", "pgd<K>-l2", "pgd<K>-targeted", "pgd<K>-ll", "cw<K>",
            "<attack>+<attack>[+...] (a cascade, e.g. apgd-ce+apgd-t)")
_STEPPED = re.compile(r"^(?P<kind>pgd|cw)(?P<steps>[1-9][0-9]*)(?P<variant>-l2|-targeted|-ll)?$")
_TARGETS = {"-targeted": "random", "-ll": "least_likely"}


DEFAULT_PGD_TRAVEL = 2.5  # PGD-K's total travel in units of eps: Madry et al.'s ratio


def training_pgd_travel(eval_config: Any) -> float:
  """The travel of a run's own evaluation PGD (`config.eval`): its steps are `eval.step_size`."""
  if eval_config.eps <= 0:
    return DEFAULT_PGD_TRAVEL
  return eval_config.step_size * eval_config.num_steps / eval_config.eps


@dataclasses.dataclass(frozen=True)
class AttackSettings:
  """The threat model, step rule and loop style shared by every attack of one evaluation.

  PGD-K takes K steps of `pgd_travel * eps / K`: its total travel is fixed whatever K is, so
  PGD-100 is a finer, not a longer-reaching, PGD-20. A run's own evaluation PGD sets the travel
  (config.eval.step_size * num_steps / eps), so "pgd20" at the run's eps is the PGD-20 that
  training reports. `unroll` unrolls the attack loops (asked for on CPU, see
  `parallel.unrolls_attack_loops`).
  """
  eps: float
  eps_l2: float = 1.0
  pgd_travel: float = DEFAULT_PGD_TRAVEL
  restarts: int = 1
  apgd_steps: int = APGD_STEPS
  fab_steps: int = FAB_STEPS
  square_queries: int = SQUARE_QUERIES
  unroll: bool = False

  def pgd_step(self, eps: float, num_steps: int) -> float:
    return self.pgd_travel * eps / num_steps


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  """What one attack name means.

  kind: "clean" (no attack), "fgsm", "pgd" (any loss, norm or target), "apgd", "apgd-t",
    "fab-t", "square", "transfer" (PGD crafted on another model) or "composite" (a cascade: the
    per-example AND of clean and `members`, each member attacking what the ones before left
    robust).
  """
  name: str
  kind: str
  num_steps: int = 0
  norm: str = "linf"
  loss: str = "ce"
  target: str | None = None
  members: tuple[str, ...] = ()

  @property
  def title(self) -> str:
    """How tables name the attack, e.g. "PGD-20", "APGD-T", "AutoAttack", "APGD-CE + APGD-T"."""
    if self.name == "autoattack":
      return "AutoAttack"
    if self.kind == "composite":
      return " + ".join(parse(m).title for m in self.members)
    if self.kind == "pgd":
      prefix = "CW" if self.loss == "cw_margin" else "PGD"
      suffix = {"l2": " L2"}.get(self.norm, "") + {"random": " targeted",
                                                   "least_likely": " least-likely"}.get(
                                                       self.target, "")
      return f"{prefix}-{self.num_steps}{suffix}"
    return {"clean": "clean", "fgsm": "FGSM", "apgd-t": "APGD-T", "fab-t": "FAB-T",
            "square": "Square",
            "transfer": f"transfer (PGD-{self.num_steps} from the other model)"}.get(
                self.kind, self.name.upper())

  @property
  def is_white_box(self) -> bool:
    """A single attack on the evaluated model itself (what `build` makes)."""
    return self.kind not in ("clean", "transfer", "composite")

  def build(self, settings: AttackSettings) -> Attack:
    """The attack under `settings` (for "transfer", the PGD to craft on the source model)."""
    eps, common = settings.eps, {"restarts": settings.restarts, "unroll": settings.unroll}
    if self.kind == "fgsm":
      return lambda logits_fn, images, labels, rngs: fgsm(logits_fn, images, labels, eps=eps)
    if self.kind == "apgd":
      return functools.partial(apgd, eps=eps, num_steps=settings.apgd_steps, loss=self.loss,
                               **common)
    if self.kind == "apgd-t":
      return functools.partial(apgd_targeted, eps=eps, num_steps=settings.apgd_steps,
                               num_target_classes=NUM_APGD_TARGETS, **common)
    if self.kind == "fab-t":
      return functools.partial(fab_targeted, eps=eps, num_steps=settings.fab_steps,
                               num_target_classes=NUM_FAB_TARGETS, **common)
    if self.kind == "square":
      return functools.partial(square, eps=eps, num_queries=settings.square_queries, **common)
    if self.kind in ("pgd", "transfer"):
      radius = settings.eps_l2 if self.norm == "l2" else eps
      return functools.partial(pgd, eps=radius, norm=self.norm, loss=self.loss,
                               target=self.target, num_steps=self.num_steps,
                               step_size=settings.pgd_step(radius, self.num_steps), **common)
    raise ValueError(f"{self.name!r} is not a single attack; valid: {valid_names_message()}")

  def stepped(self, settings: AttackSettings) -> parts.SteppedAttack | None:
    """This attack as separately compiled parts, where that is how it compiles fastest: APGD,
    APGD-T and FAB-T with unrolled loops (CPU), one restart, and more iterations than one part
    (`parts.PART_STEPS`). None for every other attack and setting."""
    if self.kind not in ("apgd", "apgd-t", "fab-t") or not settings.unroll or (
        settings.restarts != 1):
      return None
    if self.kind == "fab-t":
      if settings.fab_steps <= parts.PART_STEPS:
        return None
      return SteppedFab(settings.eps, settings.fab_steps, NUM_FAB_TARGETS)
    if settings.apgd_steps <= parts.PART_STEPS:
      return None
    if self.kind == "apgd":
      return SteppedApgd(settings.eps, settings.apgd_steps, self.loss)
    return SteppedApgd(settings.eps, settings.apgd_steps, "targeted_dlr",
                       num_target_classes=NUM_APGD_TARGETS)

  def describe(self, settings: AttackSettings) -> str:
    """One line for the results: what this attack ran."""
    eps = f"eps={settings.eps:.4g}"
    if self.kind == "clean":
      return "no attack"
    if self.kind == "fgsm":
      return f"FGSM, L-inf {eps}"
    if self.kind == "composite":
      what = ("the standard AutoAttack" if self.members == STANDARD_AUTOATTACK
              else "a cascade")
      return (f"{what}: per-example AND of clean, {', '.join(self.members)}, each attacking "
              "the examples the ones before left robust")
    if self.kind == "transfer":
      return (f"PGD-{self.num_steps} crafted on the run's other model, L-inf {eps} "
              "(black-box transfer)")
    if self.kind == "fab-t":
      return (f"FAB-T ({NUM_FAB_TARGETS} target classes), {settings.fab_steps} steps, L-inf "
              f"{eps}, {settings.restarts} restart(s), alpha_max 0.1, eta 1.05, beta 0.9")
    if self.kind == "square":
      return (f"Square, {settings.square_queries} queries, L-inf {eps}, p_init 0.8, margin "
              f"loss, {settings.restarts} restart(s)")
    if self.kind in ("apgd", "apgd-t"):
      kind = {"ce": "APGD-CE", "dlr": "APGD-DLR"}.get(self.loss) if self.kind == "apgd" else (
          f"APGD-T (targeted DLR, {NUM_APGD_TARGETS} target classes)")
      return f"{kind}, {settings.apgd_steps} steps, L-inf {eps}, {settings.restarts} restart(s)"
    radius = settings.eps_l2 if self.norm == "l2" else settings.eps
    step = f"step {settings.pgd_step(radius, self.num_steps):.4g}"
    if self.loss == "cw_margin":
      return f"PGD-{self.num_steps} on the CW margin, L-inf {eps}, {step}"
    if self.norm == "l2":
      return f"PGD-{self.num_steps}, L2 eps={radius:.4g}, {step}, CE"
    target = {"random": ", targeted (random class)",
              "least_likely": ", targeted (least-likely class)"}.get(self.target, "")
    return f"PGD-{self.num_steps}, L-inf {eps}, {step}, uniform start, CE{target}"


_FIXED = {
    "clean": AttackSpec("clean", "clean"),
    "fgsm": AttackSpec("fgsm", "fgsm", num_steps=1),
    "apgd-ce": AttackSpec("apgd-ce", "apgd", loss="ce"),
    "apgd-dlr": AttackSpec("apgd-dlr", "apgd", loss="dlr"),
    "apgd-t": AttackSpec("apgd-t", "apgd-t", loss="targeted_dlr"),
    "fab-t": AttackSpec("fab-t", "fab-t"),
    "square": AttackSpec("square", "square", loss="margin"),
    "autoattack": AttackSpec("autoattack", "composite", members=STANDARD_AUTOATTACK),
    "transfer": AttackSpec("transfer", "transfer", num_steps=TRANSFER_STEPS),
}


def valid_names_message() -> str:
  return ", ".join((*_FIXED, *PATTERNS))


def parse(name: str) -> AttackSpec:
  """The spec of one attack name; raises naming the valid ones."""
  name = name.strip().lower()
  if name in _FIXED:
    return _FIXED[name]
  if "+" in name:
    return _cascade(name)
  match = _STEPPED.match(name)
  if match is None or (match["kind"] == "cw" and match["variant"]):
    raise ValueError(f"unknown attack {name!r}; valid: {valid_names_message()}")
  return AttackSpec(name, "pgd", num_steps=int(match["steps"]),
                    norm="l2" if match["variant"] == "-l2" else "linf",
                    loss="cw_margin" if match["kind"] == "cw" else "ce",
                    target=_TARGETS.get(match["variant"]))


def _cascade(name: str) -> AttackSpec:
  """"a+b+c": the cascade of single white-box attacks, in the order given."""
  members = tuple(part.strip() for part in name.split("+"))
  for member in members:
    if not member:
      raise ValueError(f"attack {name!r} has an empty member; valid: {valid_names_message()}")
    if not parse(member).is_white_box:
      raise ValueError(f"attack {name!r}: {member!r} cannot be a member of a cascade; members "
                       "are single white-box attacks")
  if len(set(members)) != len(members):
    raise ValueError(f"attack {name!r} names a member twice")
  return AttackSpec("+".join(members), "composite", members=members)


def parse_names(text: str) -> tuple[AttackSpec, ...]:
  """Comma-separated names -> specs without duplicates, in order; raises naming a bad one."""
  names = tuple(dict.fromkeys(name.strip().lower() for name in text.split(",") if name.strip()))
  if not names:
    raise ValueError(f"no attacks given; valid: {valid_names_message()}")
  return tuple(parse(name) for name in names)
