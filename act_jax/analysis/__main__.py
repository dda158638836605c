"""`python -m act_jax.analysis --workdir=RUN` or `--study=DIR`: flatness, complexity,
compression and alignment of trained models (docs/analysis.md defines every measure).

With --workdir, analyses the run's models and writes analysis.json and its plots into the
workdir (or --output). With --study, does so for every run of a study (its study.json), skipping
runs already analysed with the same settings, and writes analysis.json, analysis.md (mean ± std
over seeds per budget, method and model) and the plots to --output (default: the study's
directory).
"""

import dataclasses
import sys

from absl import app, flags, logging
from etils import epath

from act_jax import command_line, distributed, parallel, reporting
from act_jax.analysis import report, runner

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training workdir to analyse.")
flags.DEFINE_string("study", None,
                    "A study's output directory (with study.json): analyse every run in it.")
flags.DEFINE_list("models", None, "The run's models to analyse (default: all).")
flags.DEFINE_list("measures", list(runner.DEFAULT_MEASURES),
                  "Measures, from: " + ", ".join(runner.MEASURES) + ".")
flags.DEFINE_integer("num_examples", 1000,
                     "Each measure uses the first N examples of the train and test splits.")
flags.DEFINE_integer("seed", 0, "Seed of every random direction, draw and attack start.")
flags.DEFINE_string("output", None, "Where the results go (default: the workdir or study).")
distributed.define_flag()
flags.adopt_module_key_flags(distributed)  # listed by --help with the command's own


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


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS["verbosity"].present == 0:
    logging.set_verbosity(logging.ERROR)
  if (FLAGS.workdir is None) == (FLAGS.study is None):
    command_line.fail("give one of --workdir=RUN or --study=DIR")
  if not distributed.initialize_from_flags():
    parallel.use_one_cpu_device_per_core([])  # the examples are padded to any count
  request = runner.AnalysisRequest(workdir=FLAGS.workdir or "", models=FLAGS.models,
                                   measures=tuple(FLAGS.measures),
                                   num_examples=FLAGS.num_examples, seed=FLAGS.seed,
                                   output=FLAGS.output)
  if FLAGS.study:
    analyse_study(FLAGS.study, dataclasses.replace(request, output=None), FLAGS.output)
    return
  results = runner.analyse_run(request)
  print("\n" + report.run_table(results), flush=True)
  print(f"wrote {runner.ANALYSIS_FILE} to {FLAGS.output or FLAGS.workdir} "
        f"({results['meta']['wall_seconds']:.0f} s)", file=sys.stderr, flush=True)


if __name__ == "__main__":
  command_line.run(main)
