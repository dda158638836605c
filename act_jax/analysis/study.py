"""A study's analysis: every run of a study analysed (or its current analysis.json reused), then
the table over seeds and its plots. Apart from the command line so that it defines no flags."""

import dataclasses

from etils import epath

from act_jax import reporting
from act_jax.analysis import report, runner


def analyse_study(study_dir: str, request: runner.AnalysisRequest, output: str | None) -> None:
  """Every run of the study, each into its own workdir; then the table over seeds."""
  study = reporting.read_json(epath.Path(study_dir) / "study.json")
  runs, seen, absent = [], set(), []
  for row in study["runs"]:
    if row["workdir"] in seen:
      continue
    seen.add(row["workdir"])
    path = epath.Path(row["workdir"]) / runner.ANALYSIS_FILE
    previous = reporting.read_json(path) if path.exists() else None
    settings = {"num_examples": request.num_examples, "seed": request.seed,
                "measures": list(request.measures)}
    current = previous is not None and all(previous["meta"].get(k) == v
                                           for k, v in settings.items())
    # A current analysis counts without its models (a checkout holds the committed records of
    # a study's runs, not their checkpoints); anything else needs the models.
    if not current and not (epath.Path(row["workdir"]) / "checkpoints").exists():
      absent.append(row["workdir"])  # trained elsewhere: its models are not on this machine
      print(f"skipping {row['workdir']}: no checkpoints there", flush=True)
      continue
    if not current:
      print(f"analysing {row['workdir']}", flush=True)
      previous = runner.analyse_run(dataclasses.replace(request, workdir=row["workdir"]))
    runs.append({"method": row["method"], "epochs": row.get("epochs"), "seed": row["seed"],
                 "workdir": row["workdir"], "analysis": previous})
  rows = report.study_rows(runs)
  table = report.markdown_table(rows)
  target = epath.Path(output or study_dir)
  target.mkdir(parents=True, exist_ok=True)
  reporting.write_json(target / "analysis.json", {"rows": rows, "runs": runs,
                                                   "absent_runs": absent,
                                                   "settings": dataclasses.asdict(request)})
  (target / "analysis.md").write_text(table + "\n")
  report.plot_study(rows, target / "analysis.png")
  print("\n" + table, flush=True)
