"""A study's results for people: mean ± std tables, CSV, the trade-off plot, comparison lines."""

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from etils import epath

METHOD_TITLES = {"natural": "natural training", "pgd_at": "PGD-AT", "trades": "TRADES",
                 "act": "ACT"}
# (row key, column title); accuracies are fractions in the rows and % in the tables.
METRICS = (("clean", "clean"), ("pgd20", "PGD-20"), ("autoattack", "AutoAttack"),
           ("worst_case", "worst case"))
CSV_FIELDS = ("method", "model", "seed", "clean", "pgd20", "autoattack", "worst_case",
              "clean_examples", "autoattack_examples", "train_seconds", "eval_seconds",
              "workdir")
# Fields that may differ between a study's runs and the run compared against them.
_RUN_SPECIFIC = ("method", "seed")


def title(method: str, model: str) -> str:
  """"ACT (robust)" for a model of a two-model method, the method's name otherwise."""
  name = METHOD_TITLES.get(method, method)
  return f"{name} ({model})" if method == "act" else name


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  mean = sum(values) / len(values)
  variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
  return mean, math.sqrt(variance)


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Per (method, model), in the order first seen: mean and sample std of every metric."""
  groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
  for row in rows:
    groups.setdefault((row["method"], row["model"]), []).append(row)
  summary = []
  for (method, model), members in groups.items():
    entry = {"method": method, "model": model, "title": title(method, model),
             "seeds": sorted(r["seed"] for r in members)}
    for key, _ in METRICS:
      entry[key] = _mean_std([r[key] for r in members])
    summary.append(entry)
  return summary


def markdown_table(summary: Sequence[Mapping[str, Any]], *, eps: float,
                   autoattack_examples: int, clean_examples: int) -> str:
  """One row per (method, model): accuracies in %, mean ± std over seeds."""
  header = (f"| method (L-inf eps={eps:.4g}) | seeds | clean (%) | PGD-20 (%) | "
            f"AutoAttack (%), first {autoattack_examples} | worst case (%), first "
            f"{autoattack_examples} |")
  lines = [header, "|---|---|---|---|---|---|"]
  for entry in summary:
    cells = [f"{100 * entry[key][0]:.2f} ± {100 * entry[key][1]:.2f}" for key, _ in METRICS]
    lines.append(f"| {entry['title']} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
  lines.append("")
  lines.append(f"Clean and PGD-20 on all {clean_examples} test examples; AutoAttack is the "
               "per-example AND of clean, APGD-CE and APGD-T, and the worst case adds PGD-20.")
  return "\n".join(lines)


def write_csv(rows: Sequence[Mapping[str, Any]], path: epath.PathLike) -> None:
  with epath.Path(path).open("w") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


def plot_tradeoff(rows: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]],
                  path: epath.PathLike, *, eps: float) -> None:
  """Robust against clean accuracy, one small point per run and a large marker per mean.

  Two panels: PGD-20 on the whole test split, and AutoAttack (APGD-CE + APGD-T) on its subset.
  Up and to the right is better.
  """
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot
  figure, panels = pyplot.subplots(1, 2, figsize=(11, 4.4), dpi=120)
  colours = pyplot.rcParams["axes.prop_cycle"].by_key()["color"]
  for panel, (key, name) in zip(panels, (("pgd20", "PGD-20"), ("autoattack", "AutoAttack")),
                                strict=True):
    for index, entry in enumerate(summary):
      colour = colours[index % len(colours)]
      runs = [r for r in rows if (r["method"], r["model"]) == (entry["method"], entry["model"])]
      panel.scatter([100 * r["clean"] for r in runs], [100 * r[key] for r in runs], s=18,
                    color=colour, alpha=0.6)
      panel.scatter([100 * entry["clean"][0]], [100 * entry[key][0]], s=140, marker="*",
                    color=colour, edgecolor="black", linewidth=0.6, label=entry["title"])
    panel.set_xlabel("clean accuracy (%)")
    panel.set_ylabel(f"{name} accuracy (%), L-inf eps={eps:.4g}")
    panel.grid(alpha=0.3)
  panels[0].legend(fontsize=8, loc="best")
  panels[0].set_title("each run (dots) and the mean over seeds (stars)", fontsize=9)
  figure.tight_layout()
  with epath.Path(path).open("wb") as f:
    figure.savefig(f, format="png")
  pyplot.close(figure)


def _recipe(config: Mapping[str, Any]) -> dict[str, Any]:
  """A config without what differs between a study's runs (method, seed)."""
  return {k: v for k, v in config.items() if k not in _RUN_SPECIFIC}


def comparison_lines(study_path: str, config: ml_collections.ConfigDict) -> list[str]:
  """Lines naming what this run's numbers compare against: the study of the same recipe.

  Empty when no study file is there or its recipe differs from `config` (beyond method and
  seed); then the numbers would not be comparable.
  """
  if not study_path or not os.path.exists(study_path):
    return []
  with open(study_path) as f:
    study = json.load(f)
  if _recipe(study["meta"]["config"]) != _recipe(json.loads(config.to_json_best_effort())):
    return [f"(The study in {study_path} used a different recipe; rerun it to compare.)"]
  seeds = len(study["meta"]["seeds"])
  lines = [f"Same recipe, {seeds} seed{'s' if seeds > 1 else ''} each ({study_path}; "
           f"mean ± std, %):"]
  for entry in study["summary"]:
    lines.append(f"  {entry['title']:<18} clean {100 * entry['clean'][0]:.2f} ± "
                 f"{100 * entry['clean'][1]:.2f}, PGD-20 {100 * entry['pgd20'][0]:.2f} ± "
                 f"{100 * entry['pgd20'][1]:.2f}, AutoAttack {100 * entry['autoattack'][0]:.2f}"
                 f" ± {100 * entry['autoattack'][1]:.2f}")
  return lines
