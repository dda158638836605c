"""`python -m act_jax.plot_curves --workdir=WORKDIR [--output=PNG]`: a run's curves, no TensorBoard.

Draws `WORKDIR/results.json` (docs/configs.md#resultsjson) as one PNG, by default
`WORKDIR/training_curves.png`: each model's training loss and training accuracy from
`train_log`, and the accuracy of every evaluation (`evaluations`: the periodic ones as lines, the
final one as stars), all against the step. TensorBoard shows the same scalars but is not a
dependency of act-jax; this reads the JSON only, which training rewrites atomically, so it also
draws a run that is still training, or a results.json copied off the machine that ran it.
"""

import math
from collections.abc import Mapping, Sequence
from typing import Any

from etils import epath

from act_jax import write_failures
from act_jax.errors import UserError
from act_jax.evaluate.report import column_title


def _number(entry: Mapping[str, Any], key: str, scale: float = 1.0) -> float:
  """A logged number, scaled; NaN (a gap in the line) where it is missing or null (results.json
  holds non-finite values as null, see `reporting.json_safe`)."""
  value = entry.get(key)
  return math.nan if value is None else scale * float(value)


def _model_names(entries: Sequence[Mapping[str, Any]]) -> list[str]:
  """The models of the training log in order of appearance ("natural/loss" -> "natural")."""
  return list(dict.fromkeys(key.split("/")[0] for entry in entries for key in entry if "/" in key))


def _evaluation_title(periodic: Sequence[Mapping[str, Any]],
                      finals: Sequence[Mapping[str, Any]]) -> str:
  """Which evaluations the panel shows, on how many examples of which split."""
  parts = [f"{kind} on {runs[-1]['num_examples']} examples"
           for kind, runs in (("periodic (lines)", periodic), ("final (stars)", finals)) if runs]
  split = (periodic or finals)[-1]["split"] if parts else "test"
  return f"{split} accuracy\n" + (", ".join(parts) or "no evaluation yet")


def _pyplot() -> Any:
  import matplotlib  # only this command draws
  matplotlib.use("Agg")
  from matplotlib import pyplot
  return pyplot


def curves_figure(results: Mapping[str, Any]) -> Any:
  """Three panels against the step: training loss, training accuracy (on the inputs each model
  trains on: clean for `natural`, adversarial for `robust`) and evaluation accuracy."""
  pyplot = _pyplot()
  train_log, evaluations = results.get("train_log", []), results.get("evaluations", [])
  if not train_log and not evaluations:
    raise UserError("results.json has no training log and no evaluation yet: nothing to plot")
  figure, (loss, accuracy, evaluated) = pyplot.subplots(1, 3, figsize=(15, 4.2), dpi=110)
  steps = [entry["step"] for entry in train_log]
  for model in _model_names(train_log):
    loss.plot(steps, [_number(e, f"{model}/loss") for e in train_log], label=model)
    accuracy.plot(steps, [_number(e, f"{model}/accuracy", 100) for e in train_log], label=model)
  loss.set_title("training loss (mean over each logging window)", fontsize=9)
  accuracy.set_title("training accuracy (%), on the inputs each model trains on", fontsize=9)

  periodic = [e for e in evaluations if e["kind"] == "periodic"]
  finals = [e for e in evaluations if e["kind"] == "final"]
  colours = pyplot.rcParams["axes.prop_cycle"].by_key()["color"]
  curves = dict.fromkeys((model, name) for e in evaluations
                         for model, by_name in e["accuracy"].items() for name in by_name)
  for index, (model, name) in enumerate(curves):
    style = {"color": colours[index % len(colours)]}
    label = f"{model}, {column_title(name)}"
    points = [(e["step"], _number(e["accuracy"][model], name, 100))
              for e in periodic if model in e["accuracy"]]
    if points:
      evaluated.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label, **style)
    for final in (e for e in finals if model in e["accuracy"]):
      evaluated.scatter([final["step"]], [_number(final["accuracy"][model], name, 100)], marker="*",
                        s=120, edgecolor="black", linewidth=0.5,
                        label=None if points else label, **style)
  evaluated.set_title(_evaluation_title(periodic, finals), fontsize=9)

  for panel, ylabel in ((loss, "loss"), (accuracy, "accuracy (%)"), (evaluated, "accuracy (%)")):
    panel.set_xlabel("step")
    panel.set_ylabel(ylabel)
    panel.grid(alpha=0.3)
    if panel.get_legend_handles_labels()[0]:
      panel.legend(fontsize=8)
  figure.tight_layout()
  return figure


def plot_curves(results: Mapping[str, Any], path: epath.PathLike) -> None:
  """Writes `curves_figure(results)` to `path` as a PNG."""
  figure = curves_figure(results)
  try:
    with write_failures.reported("the curves plot", path), epath.Path(path).open("wb") as f:
      figure.savefig(f, format="png")
  finally:
    _pyplot().close(figure)
