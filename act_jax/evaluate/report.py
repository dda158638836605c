"""Presenting an evaluation: a markdown table of accuracies and the accuracy-vs-eps plot."""

from collections.abc import Mapping, Sequence
from typing import Any

from etils import epath

from act_jax.attacks import specs as attack_specs
from act_jax.evaluate.evaluator import WORST_CASE


def column_title(name: str) -> str:
  return "worst case" if name == WORST_CASE else attack_specs.parse(name).title


def accuracy_table(accuracy: Mapping[str, Mapping[str, float]], *, eps: float,
                   columns: Sequence[str] | None = None) -> str:
  """Rows: models; columns: `columns` (default: every reported name), all in %."""
  columns = list(columns or next(iter(accuracy.values())))
  lines = [f"| model (L-inf eps={eps:.4g}, accuracy %) | "
           + " | ".join(map(column_title, columns)) + " |",
           "|---" * (len(columns) + 1) + "|"]
  for model, by_attack in accuracy.items():
    lines.append(f"| {model} | " + " | ".join(f"{100 * by_attack[name]:.2f}"
                                              for name in columns) + " |")
  return "\n".join(lines)


def stages_table(stages: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]]) -> str:
  """Per model and cascade: each stage's attack, the examples it attacked and the robust
  accuracy after it, so a reader sees which attack found what."""
  lines = ["| model | cascade | stage | examples attacked | robust accuracy after it (%) |",
           "|---|---|---|---|---|"]
  for model, cascades in stages.items():
    for cascade, rows in cascades.items():
      for row in rows:
        lines.append(f"| {model} | {column_title(cascade)} | {column_title(row['attack'])} | "
                     f"{row['attacked']} | {100 * row['accuracy']:.2f} |")
  return "\n".join(lines)


def plot_eps_sweep(sweep: Mapping[str, Any], path: epath.PathLike, *, eps: float) -> None:
  """Robust accuracy against eps for each model, with the evaluation eps marked; a PNG."""
  import matplotlib  # only the command line draws
  matplotlib.use("Agg")
  from matplotlib import pyplot
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
