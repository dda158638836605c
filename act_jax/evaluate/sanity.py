"""The checks that catch a broken robustness evaluation (Carlini et al. 2019).

Each is reported in the results and warned about when it fails; a failed check means the
accuracies overstate robustness, most often through masked gradients.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class SanityCheck:
  check: str
  model: str
  passed: bool
  detail: str


def sanity_checks(accuracy: Mapping[str, Mapping[str, float]],
                  sweep: Mapping[str, Any] | None,
                  large_eps: Mapping[str, Any] | None) -> list[SanityCheck]:
  """The checks that catch a broken evaluation (Carlini et al. 2019, "On evaluating ...").

  - no attack raises accuracy above clean accuracy;
  - accuracy does not increase with eps;
  - at eps = 0 the attack leaves clean accuracy unchanged;
  - an attack with a very large eps drives accuracy to (near) zero; if not, gradients are
    probably masked and every number above overstates robustness.
  """
  checks = []
  for model, by_attack in accuracy.items():
    clean = by_attack["clean"]
    above = {name: value for name, value in by_attack.items() if value > clean}
    checks.append(SanityCheck(
        "robust accuracy <= clean accuracy", model, not above,
        "ok" if not above else "above clean: " + ", ".join(
            f"{name} {100 * value:.2f}%" for name, value in above.items())))
    if sweep is not None:
      eps_values, values = sweep["eps"], sweep["accuracy"][model]
      rises = [(eps_values[i], eps_values[i + 1]) for i in range(len(values) - 1)
               if values[i + 1] > values[i]]
      checks.append(SanityCheck(
          "accuracy non-increasing in eps", model, not rises,
          "ok" if not rises else "rises between eps " + ", ".join(
              f"{a:.4g}->{b:.4g}" for a, b in rises)))
      if 0.0 in eps_values:
        at_zero = values[eps_values.index(0.0)]
        checks.append(SanityCheck(
            "accuracy at eps=0 equals clean accuracy", model, at_zero == clean,
            f"{100 * at_zero:.2f}% at eps=0, {100 * clean:.2f}% clean"))
    if large_eps is not None:
      value = large_eps["accuracy"][model]
      checks.append(SanityCheck(
          f"a large-eps attack drives accuracy near 0 (<= {100 * large_eps['max_accuracy']:.4g}%)",
          model, value <= large_eps["max_accuracy"],
          f"{large_eps['attack']} at eps={large_eps['eps']:.4g}: {100 * value:.2f}%"
          + ("" if value <= large_eps["max_accuracy"]
             else " -- possible gradient masking: the other numbers may overstate robustness")))
  return checks
