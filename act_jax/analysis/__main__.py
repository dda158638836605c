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

from act_jax import command_line, distributed, parallel
from act_jax.analysis import report, runner, study

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
    study.analyse_study(FLAGS.study, dataclasses.replace(request, output=None), FLAGS.output)
    return
  results = runner.analyse_run(request)
  print("\n" + report.run_table(results), flush=True)
  print(f"wrote {runner.ANALYSIS_FILE} to {FLAGS.output or FLAGS.workdir} "
        f"({results['meta']['wall_seconds']:.0f} s)", file=sys.stderr, flush=True)


if __name__ == "__main__":
  command_line.run(main)
