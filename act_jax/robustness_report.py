"""Presenting a robustness evaluation: a markdown table and the accuracy-vs-eps plot."""

from typing import Any, Mapping

from etils import epath

from act_jax import robustness


def accuracy_table(accuracy: Mapping[str, Mapping[str, float]], *, eps: float) -> str:
  """Rows: models; columns: clean, each attack, and the per-example worst case (all in %)."""
  columns = list(next(iter(accuracy.values())))
  header = [name.replace(robustness.WORST_CASE, "worst case") for name in columns]
  lines = [f"| model (eps={eps:.4g}) | " + " | ".join(header) + " |",
           "|---" * (len(columns) + 1) + "|"]
  for model, by_attack in accuracy.items():
    lines.append(f"| {model} | " + " | ".join(f"{100 * by_attack[name]:.2f}"
                                              for name in columns) + " |")
  return "\n".join(lines)


def plot_eps_sweep(sweep: Mapping[str, Any], path: epath.PathLike, *, eps: float) -> None:
  """Robust accuracy against eps for each model, with the evaluation eps marked; a PNG."""
  import matplotlib  # pylint: disable=g-import-not-at-top  (only the CLI draws)
  matplotlib.use("Agg")
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  figure, axes = pyplot.subplots(figsize=(5.5, 3.8), dpi=120)
  for model, values in sweep["accuracy"].items():
    axes.plot(sweep["eps"], [100 * v for v in values], marker="o", label=model)
  axes.axvline(eps, color="grey", linestyle=":", label=f"eps={eps:.4g}")
  axes.set_xlabel(f"L-inf eps ({sweep['attack']})")
  axes.set_ylabel("accuracy (%)")
  axes.set_ylim(0, 100)
  axes.grid(alpha=0.3)
  axes.legend()
  figure.tight_layout()
  with epath.Path(path).open("wb") as f:
    figure.savefig(f, format="png")
  pyplot.close(figure)
