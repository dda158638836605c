"""The analysis for people: a run's plots, and a study's table over seeds with its plots."""

import math
from collections.abc import Mapping, Sequence
from typing import Any

from etils import epath

from act_jax.study.report import title

# (measure, key, title, better when): the scalar columns of the study table.
COLUMNS = (
    ("entropy", "clean", "entropy clean (nats)", "higher: less confident"),
    ("entropy", "pgd", "entropy PGD (nats)", "higher: less confident"),
    ("hessian", "clean", "Hessian top eigenvalue, clean CE", "lower: flatter"),
    ("hessian", "pgd", "Hessian top eigenvalue, PGD CE", "lower: flatter"),
    ("pac_bayes", "sigma", "PAC-Bayes sigma", "higher: flatter"),
    ("fisher_rao", "norm", "Fisher-Rao norm", "lower: less complex"),
    ("effective_rank", "penultimate", "effective rank, penultimate", "lower: more compressed"),
    ("generalisation", "clean_gap", "train - test, clean", "lower"),
    ("generalisation", "pgd_gap", "train - test, PGD", "lower"),
)


def _pyplot() -> Any:
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot
  return pyplot


def _save(figure: Any, path: epath.Path) -> None:
  figure.tight_layout()
  with path.open("wb") as f:
    figure.savefig(f, format="png")
  _pyplot().close(figure)


def plot_run(results: Mapping[str, Any], output: epath.Path) -> list[str]:
  """Landscapes (1-D and 2-D, every model on the same scale) and the noise curves of one run;
  returns the files written."""
  pyplot = _pyplot()
  models = results["models"]
  written = []
  with_landscape = {n: m["landscape"] for n, m in models.items() if "landscape" in m}
  if with_landscape:
    figure, panels = pyplot.subplots(1, 1 + len(with_landscape),
                                     figsize=(4.5 * (1 + len(with_landscape)), 4), dpi=110,
                                     squeeze=False)
    for name, landscape in with_landscape.items():
      panels[0][0].plot(landscape["alphas_1d"], landscape["loss_1d"], marker="o", markersize=3,
                        label=name)
    panels[0][0].set_xlabel("step along a filter-normalised direction")
    panels[0][0].set_ylabel("training loss (CE, eval mode)")
    panels[0][0].legend(fontsize=8)
    panels[0][0].grid(alpha=0.3)
    levels = sorted({v for ls in with_landscape.values() for row in ls["loss_2d"] for v in row})
    low, high = levels[0], min(levels[-1], levels[0] + 5.0)
    for panel, (name, landscape) in zip(panels[0][1:], with_landscape.items(), strict=True):
      alphas = landscape["alphas_2d"]
      shared = [low + (high - low) * i / 20 for i in range(21)]  # one colour scale for all
      contour = panel.contourf(alphas, alphas, landscape["loss_2d"], levels=shared,
                               extend="max", cmap="viridis")
      panel.set_title(f"{name}: loss over two directions", fontsize=9)
      figure.colorbar(contour, ax=panel)
    _save(figure, output / "analysis_landscape.png")
    written.append("analysis_landscape.png")
  with_noise = {n: m["weight_noise"] for n, m in models.items() if "weight_noise" in m}
  if with_noise:
    figure, panels = pyplot.subplots(1, 2, figsize=(10, 4), dpi=110)
    for name, noise in with_noise.items():
      for panel, key in zip(panels, ("loss_rise", "error_rise"), strict=True):
        panel.errorbar(noise["scales"], noise[key], yerr=noise[f"{key}_std"], marker="o",
                       capsize=3, label=name)
    for panel, title in zip(panels, ("training loss rise", "training error rise"), strict=True):
      panel.set_xscale("log")
      panel.set_xlabel("filter-normalised noise scale")
      panel.set_ylabel(title)
      panel.grid(alpha=0.3)
      panel.legend(fontsize=8)
    _save(figure, output / "analysis_weight_noise.png")
    written.append("analysis_weight_noise.png")
  return written


def run_table(results: Mapping[str, Any]) -> str:
  """One row per model of a run: every scalar column it has."""
  lines = ["| model | measure | value |", "|---|---|---|"]
  for model, measures in results["models"].items():
    for measure, key, name, better in COLUMNS:
      if measure in measures:
        lines.append(f"| {model} | {name} ({better}) | {measures[measure][key]:.4g} |")
  for kind, aligned in results.get("alignment", {}).items():
    lines.append(f"| natural vs robust | agreement, {kind} | {aligned['agreement']:.4g} |")
    lines.append(f"| natural vs robust | KL(natural ‖ robust), {kind} | {aligned['kl']:.4g} |")
    for layer, value in aligned["cka"].items():
      lines.append(f"| natural vs robust | linear CKA {layer}, {kind} | {value:.4g} |")
  return "\n".join(lines)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  mean = sum(values) / len(values)
  if len(values) < 2:
    return mean, 0.0
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def study_rows(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """One row per (epochs, method, model): each column's mean and std over the seeds.

  `runs` are {"method", "epochs", "seed", "analysis"} for every analysed run.
  """
  groups: dict[tuple[int, str, str], list[Mapping[str, Any]]] = {}
  for run in runs:
    for model, measures in run["analysis"]["models"].items():
      groups.setdefault((run["epochs"], run["method"], model), []).append(measures)
  rows = []
  for (epochs, method, model), members in sorted(groups.items(), key=lambda g: g[0][0]):
    row = {"epochs": epochs, "method": method, "model": model, "seeds": len(members)}
    for measure, key, _, _ in COLUMNS:
      values = [m[measure][key] for m in members if measure in m]
      if values:
        row[f"{measure}.{key}"] = _mean_std(values)
    rows.append(row)
  return rows


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """The study table: one row per (budget, method, model), mean ± std over seeds."""
  columns = [(f"{m}.{k}", name) for m, k, name, _ in COLUMNS]
  lines = ["| epochs | model | seeds | " + " | ".join(name for _, name in columns) + " |",
           "|---" * (3 + len(columns)) + "|"]
  for row in rows:
    cells = []
    for key, _ in columns:
      if key not in row:
        cells.append("-")
        continue
      mean, std = row[key]
      cells.append(f"{mean:.4g} ± {std:.2g}" if row["seeds"] > 1 else f"{mean:.4g}")
    lines.append(f"| {row['epochs']} | {title(row['method'], row['model'])} | {row['seeds']} | "
                 + " | ".join(cells) + " |")
  lines.append("")
  lines.append("Better: " + "; ".join(f"{name}: {better}" for _, _, name, better in COLUMNS)
               + ".")
  return "\n".join(lines)


def plot_study(rows: Sequence[Mapping[str, Any]], path: epath.Path) -> None:
  """One panel per column of the study table: each (budget, method, model)'s mean as a bar,
  with the standard deviation over seeds as an error bar."""
  pyplot = _pyplot()
  columns = [(f"{m}.{k}", name, better) for m, k, name, better in COLUMNS
             if any(f"{m}.{k}" in row for row in rows)]
  if not columns:
    return
  labels = [f"{title(r['method'], r['model'])}, {r['epochs']} ep" for r in rows]
  width = max(6.0, 0.45 * len(rows) + 2)
  figure, panels = pyplot.subplots(len(columns), 1, figsize=(width, 2.2 * len(columns)),
                                   dpi=110, squeeze=False)
  for panel, (key, name, better) in zip(panels[:, 0], columns, strict=True):
    means = [row[key][0] if key in row else math.nan for row in rows]
    spreads = [row[key][1] if key in row else 0.0 for row in rows]
    panel.bar(range(len(rows)), means, yerr=spreads, capsize=3, color="tab:blue", alpha=0.8)
    panel.set_title(f"{name} ({better})", fontsize=9)
    panel.set_xticks(range(len(rows)))
    panel.set_xticklabels(labels if panel is panels[-1, 0] else [""] * len(rows), rotation=30,
                          ha="right", fontsize=8)
    panel.grid(axis="y", alpha=0.3)
  _save(figure, path)
