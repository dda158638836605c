"""A study's results for people: mean ± std tables, CSV, the trade-off plot, comparison lines."""

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from etils import epath

from act_jax import workdir as workdir_lib
from act_jax.attacks import specs as attack_specs

METHOD_TITLES = {"natural": "natural training", "pgd_at": "PGD-AT", "trades": "TRADES",
                 "act": "ACT"}
# (row key, column title); accuracies are fractions in the rows and % in the tables. The
# "autoattack" key holds the accuracy under the run's cascade, which `cascade` names: the
# standard AutoAttack, or (in records made before FAB-T and Square existed here) its
# gradient-based part, LEGACY_CASCADE.
METRICS = (("clean", "clean"), ("pgd20", "PGD-20"), ("autoattack", "AutoAttack"),
           ("worst_case", "worst case"))
LEGACY_CASCADE = "apgd-ce+apgd-t"
CSV_FIELDS = ("method", "model", "epochs", "seed", "clean", "pgd20", "autoattack", "cascade",
              "worst_case", "clean_examples", "autoattack_examples", "train_seconds",
              "eval_seconds", "workdir")
# Fields that may differ between a study's runs and the run compared against them: what the
# study varies (the budget is compared apart, `_recipe`), and what changes neither the training
# nor its numbers (cadences of logging, checkpoints and the learning curve's evaluations, where
# the data lies, the evaluation's batch size).
_RUN_SPECIFIC = ("method", "seed", "train.epochs", "train.eval_every_steps",
                 "eval.periodic_num_examples", "eval.batch_size", *workdir_lib.RESULT_NEUTRAL)
MAX_LISTED_DIFFERENCES = 4


def title(method: str, model: str) -> str:
  """"ACT (robust)" for a model of a two-model method, the method's name otherwise."""
  name = METHOD_TITLES.get(method, method)
  return f"{name} ({model})" if method == "act" else name


def cascade_title(cascade: str) -> str:
  """"AutoAttack" for the standard cascade, "APGD-CE + APGD-T" for its gradient-based part."""
  return attack_specs.parse(cascade).title


def cascades_title(entries: Sequence[Mapping[str, Any]]) -> str:
  """The title of the cascade all `entries` used, or "AutoAttack or part" when they differ."""
  names = {entry.get("cascade", LEGACY_CASCADE) for entry in entries}
  return cascade_title(names.pop()) if len(names) == 1 else "AutoAttack or its part"


def _seeds(count: int) -> str:
  return f"{count} seed{'s' if count > 1 else ''}"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  mean = sum(values) / len(values)
  variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
  return mean, math.sqrt(variance)


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Per (epochs, method, model, cascade), budgets ascending, methods in the order first seen:
  the mean and sample std of every metric over the seeds. Runs evaluated with different
  cascades are never averaged together."""
  groups: dict[tuple[int, str, str, str], list[Mapping[str, Any]]] = {}
  for row in rows:
    groups.setdefault((row["epochs"], row["method"], row["model"],
                       row.get("cascade", LEGACY_CASCADE)), []).append(row)
  summary = []
  for (epochs, method, model, cascade), members in sorted(groups.items(),
                                                          key=lambda item: item[0][0]):
    entry = {"epochs": epochs, "method": method, "model": model, "cascade": cascade,
             "title": title(method, model), "seeds": sorted(r["seed"] for r in members)}
    for key, _ in METRICS:
      entry[key] = _mean_std([r[key] for r in members])
    entry["trained_on"] = sorted({m for r in members for m in r.get("trained_on", [])})
    summary.append(entry)
  return summary


def _cell(mean_std: Sequence[float], count: int) -> str:
  """"84.37 ± 0.34" over several seeds; one seed has no spread to show."""
  mean, std = mean_std
  return f"{100 * mean:.2f} ± {100 * std:.2f}" if count > 1 else f"{100 * mean:.2f}"


def examples_text(count: int, total: int | None, split: str = "test") -> str:
  """"all 10,000 test examples", or "the first 256 of 10,000 validation examples" for a
  subset of the hold-out."""
  if total is None:
    return f"{count:,} {split} examples"
  return (f"all {total:,} {split} examples" if count >= total
          else f"the first {count:,} of {total:,} {split} examples")


def markdown_table(summary: Sequence[Mapping[str, Any]], *, eps: float,
                   autoattack_examples: int, clean_examples: int, missing: int = 0,
                   split_examples: int | None = None, split: str = "test") -> str:
  """One row per (budget, method, model): accuracies in %, mean ± std over seeds.

  The cascade's column is titled by the cascade the runs used; where runs used different ones,
  each cell names its own. `split_examples` is the size of the evaluation split (`split`: test, or
  the validation hold-out), so that a subset is said to be one.
  """
  column = cascades_title(summary)
  mixed = column == "AutoAttack or its part"
  header = (f"| epochs | method (L-inf eps={eps:.4g}) | seeds | clean (%) | PGD-20 (%) | "
            f"{column} (%), first {autoattack_examples} | worst case (%), first "
            f"{autoattack_examples} |")
  lines = [header, "|---|---|---|---|---|---|---|"]
  for entry in summary:
    count = len(entry["seeds"])
    cells = [_cell(entry[key], count) for key, _ in METRICS]
    if mixed:
      cells[2] += f" ({cascade_title(entry['cascade'])})"
    lines.append(f"| {entry['epochs']} | {entry['title']} | {count} | " + " | ".join(cells)
                 + " |")
  lines.append("")
  used = sorted({entry["cascade"] for entry in summary})
  lines.append(f"Mean ± sample std over seeds (one seed: its value). Clean and PGD-20 on "
               f"{examples_text(clean_examples, split_examples, split)}; "
               + "; ".join(f"{cascade_title(c)} is the per-example AND of clean, "
                           + ", ".join(attack_specs.parse(c).title
                                       for c in attack_specs.parse(c).members)
                           + " (each attacking what the ones before left robust)"
                           for c in used)
               + "; the worst case adds PGD-20.")
  if machines := trained_on_text(summary):
    lines.append(machines)
  if missing:
    lines.append(f"Partial: {missing} run{'s' if missing > 1 else ''} of the study not "
                 "finished yet.")
  return "\n".join(lines)


def _joined(items: Sequence[str]) -> str:
  """"3", "3 and 10", "3, 10 and 30"."""
  return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def trained_on_text(summary: Sequence[Mapping[str, Any]]) -> str:
  """Which machines trained each budget's runs, in one line ("" where none is recorded).

  Numbers from different machines (a CPU's full float32 against a GPU's TF32 convolutions, say)
  are not digit for digit comparable, so a table that joins them says which is which.
  """
  by_budget: dict[int, set[str]] = {}
  for entry in summary:
    by_budget.setdefault(entry["epochs"], set()).update(entry.get("trained_on", []))
  if not any(by_budget.values()):
    return ""
  groups: dict[tuple[str, ...], list[str]] = {}
  for epochs, machines in sorted(by_budget.items()):
    groups.setdefault(tuple(sorted(machines)), []).append(str(epochs))
  if len(groups) == 1:
    return f"Trained on {_joined(next(iter(groups)))}."
  return " ".join(
      f"{_joined(budgets)} epochs trained on "
      f"{_joined(machines) if machines else 'a machine not recorded'}."
      for machines, budgets in groups.items())


def write_csv(rows: Sequence[Mapping[str, Any]], path: epath.PathLike) -> None:
  with epath.Path(path).open("w") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


def _pyplot() -> Any:
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot
  return pyplot


def _save(figure: Any, path: epath.PathLike) -> None:
  figure.tight_layout()
  with epath.Path(path).open("wb") as f:
    figure.savefig(f, format="png")
  _pyplot().close(figure)


def _colours(summary: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], str]:
  """One colour per (method, model), the same in every panel and plot."""
  cycle = _pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
  keys = list(dict.fromkeys((e["method"], e["model"]) for e in summary))
  return {key: cycle[index % len(cycle)] for index, key in enumerate(keys)}


def plot_tradeoff(rows: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]],
                  path: epath.PathLike, *, eps: float) -> None:
  """Robust against clean accuracy, one small point per run and a large marker per mean.

  One row of panels per budget: PGD-20 on the whole test split, and the runs' cascade
  (AutoAttack, or its gradient-based part for older records) on its subset, against clean
  accuracy; up and to the right is better.
  """
  pyplot = _pyplot()
  budgets = sorted({e["epochs"] for e in summary})
  figure, panels = pyplot.subplots(len(budgets), 2, figsize=(11, 4.4 * len(budgets)), dpi=120,
                                   squeeze=False)
  colours = _colours(summary)
  for budget, row_panels in zip(budgets, panels, strict=True):
    cascade = cascades_title([e for e in summary if e["epochs"] == budget])
    for panel, (key, name) in zip(row_panels, (("pgd20", "PGD-20"), ("autoattack", cascade)),
                                  strict=True):
      for entry in (e for e in summary if e["epochs"] == budget):
        colour = colours[(entry["method"], entry["model"])]
        runs = [r for r in rows if (r["epochs"], r["method"], r["model"]) == (
            budget, entry["method"], entry["model"])]
        panel.scatter([100 * r["clean"] for r in runs], [100 * r[key] for r in runs], s=18,
                      color=colour, alpha=0.6)
        panel.scatter([100 * entry["clean"][0]], [100 * entry[key][0]], s=140, marker="*",
                      color=colour, edgecolor="black", linewidth=0.6,
                      label=f"{entry['title']} ({_seeds(len(entry['seeds']))})")
      panel.set_xlabel("clean accuracy (%)")
      panel.set_ylabel(f"{name} accuracy (%), L-inf eps={eps:.4g}")
      panel.set_title(f"{budget} epochs: each run (dots), the mean over seeds (stars)",
                      fontsize=9)
      panel.grid(alpha=0.3)
    row_panels[0].legend(fontsize=8, loc="best")
  _save(figure, path)


def _curve_band(runs: Sequence[Mapping[str, Any]], key: str
                ) -> tuple[list[float], list[float], list[float], list[float]]:
  """(epochs, mean, min, max) over the runs of `key` at the epochs every run has."""
  by_epoch: dict[float, list[float]] = {}
  for run in runs:
    for point in run["curve"]:
      by_epoch.setdefault(round(point["epoch"], 6), []).append(100 * point[key])
  epochs = sorted(e for e, values in by_epoch.items() if len(values) == len(runs))
  return (epochs, [sum(by_epoch[e]) / len(runs) for e in epochs],
          [min(by_epoch[e]) for e in epochs], [max(by_epoch[e]) for e in epochs])


def plot_curves(rows: Sequence[Mapping[str, Any]], path: epath.PathLike, *, eps: float) -> None:
  """Learning curves: clean and PGD-20 accuracy on the curve subset after each epoch.

  One row of panels per budget; per method and model the mean over seeds (line) and the range
  of the seeds (band). Runs without a curve (trained without one) are left out.
  """
  pyplot = _pyplot()
  with_curves = [r for r in rows if r.get("curve")]
  budgets = sorted({r["epochs"] for r in with_curves}) or [None]
  figure, panels = pyplot.subplots(len(budgets), 2, figsize=(11, 4.0 * len(budgets)), dpi=120,
                                   squeeze=False)
  colours = _colours(summarise(with_curves)) if with_curves else {}
  for budget, row_panels in zip(budgets, panels, strict=True):
    runs = [r for r in with_curves if r["epochs"] == budget]
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for run in runs:
      groups.setdefault((run["method"], run["model"]), []).append(run)
    for panel, (key, name) in zip(row_panels, (("clean", "clean"), ("pgd20", "PGD-20")),
                                  strict=True):
      for (method, model), members in groups.items():
        epochs, mean, low, high = _curve_band(members, key)
        colour = colours[(method, model)]
        panel.plot(epochs, mean, color=colour, marker="o", markersize=3,
                   label=f"{title(method, model)} ({_seeds(len(members))})")
        if len(members) > 1:
          panel.fill_between(epochs, low, high, color=colour, alpha=0.2, linewidth=0)
      examples = runs[0]["curve"][0]["num_examples"] if runs else 0
      panel.set_xlabel("epoch")
      panel.set_ylabel(f"{name} accuracy (%)" + (f", L-inf eps={eps:.4g}" if key != "clean"
                                                 else ""))
      panel.set_title(f"{budget} epochs: first {examples} test images, mean and range of "
                      "the seeds" if runs else "no learning curves recorded", fontsize=9)
      panel.grid(alpha=0.3)
    if groups:
      row_panels[0].legend(fontsize=8, loc="best")
  _save(figure, path)


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flat(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _recipe(config: Mapping[str, Any]) -> dict[str, Any]:
  """A config's fields that make its recipe, flattened: the learning-rate cuts as fractions of
  training, since a study scales them with each budget (the cut at 2.25 of 3 epochs is at 7.5
  of 10)."""
  flat = _flat(config)
  epochs, cuts = flat.get("train.epochs"), flat.get("optim.lr_decay_epochs")
  if epochs and cuts is not None:
    flat["optim.lr_decay_epochs"] = [round(cut / epochs, 6) for cut in cuts]
  return {k: v for k, v in flat.items() if k not in _RUN_SPECIFIC}


def _recipe_differences(study_config: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
  """The fields in which two configs differ beyond what a study varies or what changes no
  number, as "field (study's -> this)". A field that one of them lacks (added to the configs
  after the study ran) counts as equal."""
  a, b = _recipe(study_config), _recipe(config)
  return [f"{k} ({a[k]!r} -> {b[k]!r})" for k in sorted(set(a) & set(b)) if a[k] != b[k]]


def _cells(entry: Mapping[str, Any], count: int) -> str:
  return ", ".join(f"{name} {_cell(entry[key], count)}" for key, name in (
      ("clean", "clean"), ("pgd20", "PGD-20"),
      ("autoattack", cascade_title(entry.get("cascade", LEGACY_CASCADE)))))


def comparison_lines(study_path: str, config: ml_collections.ConfigDict) -> list[str]:
  """Lines naming what this run's numbers compare against: the study of the same recipe.

  One line saying so when the study file is missing, has no runs of this budget, or its recipe
  differs from `config` beyond what a study varies (naming the fields); then the numbers would
  not be comparable. One seed has no spread: its values are printed alone.
  """
  if not os.path.exists(study_path):
    return [f"(No study at {study_path} to compare with.)"]
  with open(study_path) as f:
    study = json.load(f)
  study_config = study["meta"]["config"]
  differences = _recipe_differences(study_config, json.loads(config.to_json_best_effort()))
  if differences:
    listed = ", ".join(differences[:MAX_LISTED_DIFFERENCES]) + (
        f" and {len(differences) - MAX_LISTED_DIFFERENCES} more"
        if len(differences) > MAX_LISTED_DIFFERENCES else "")
    return [f"(The study in {study_path} used a different recipe: {listed}; rerun it to "
            "compare.)"]
  budget = config.train.epochs
  entries = [e for e in study["summary"]
             if e.get("epochs", study_config["train"]["epochs"]) == budget]
  if not entries:
    budgets = study["meta"].get("epochs") or [study_config["train"]["epochs"]]
    return [f"(The study in {study_path} has no runs of {budget} epochs, only of "
            f"{', '.join(map(str, budgets))}; nothing to compare with.)"]
  counts = {len(e["seeds"]) for e in entries}
  if len(counts) == 1:
    count = counts.pop()
    lines = [f"Same recipe, {_seeds(count)}{' each' if count > 1 else ''} ({study_path}; "
             + ("mean ± std, %):" if count > 1 else "%):")]
    lines += [f"  {e['title']:<18} {_cells(e, count)}" for e in entries]
  else:  # a partial study: its methods have run different numbers of seeds
    lines = [f"Same recipe ({study_path}; mean ± std over n seeds, %):"]
    lines += [f"  {e['title']:<18} n={len(e['seeds'])}: {_cells(e, len(e['seeds']))}"
              for e in entries]
  return lines
