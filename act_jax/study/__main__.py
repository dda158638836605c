"""`python -m act_jax.study --config=fashion_mnist --workdir=DIR
    --methods=natural,pgd_at,trades,act --seeds=0,1,2 [--epochs=10,30]`

Trains every method with every seed at every budget on the config's recipe (any `--config.*`
override applies to all runs), evaluates each model with the one evaluator, and writes
study.json, study.csv, study.md, study.png (the trade-off) and curves.png (learning curves) to
--output_dir (default: DIR). Running the same command again skips finished runs and resumes
interrupted ones from their checkpoints.
"""

from absl import app, flags, logging

from act_jax import command_line, distributed, parallel, provenance
from act_jax.study import runner

FLAGS = flags.FLAGS
command_line.define_config_flag("The recipe every run shares.")
flags.DEFINE_string("workdir", None, "Where each run trains, as DIR/<method>/seed<seed>.",
                    required=True)
flags.DEFINE_string("methods", "natural,pgd_at,trades,act", "Comma-separated training methods.")
flags.DEFINE_string("seeds", "0,1,2", "Comma-separated seeds.")
flags.DEFINE_string("epochs", None,
                    "Comma-separated training budgets in epochs, trained in this order; each "
                    "scales the recipe's lr schedule (default: the config's train.epochs).")
flags.DEFINE_integer("curve_examples", 2000,
                     "Each run's learning curve: clean and PGD-20 on the first N examples of "
                     "config.eval.split (test, or validation for the hold-out) "
                     "after every epoch (0: none).")
flags.DEFINE_bool("report_only", False,
                  "Train nothing: write the tables and plots from the finished runs of the grid.")
flags.DEFINE_integer("autoattack_examples", 1000,
                     "The cascade (--cascade) runs on the first N examples of config.eval.split.")
flags.DEFINE_string("cascade", "autoattack",
                    "The robust-accuracy cascade: autoattack (the standard AutoAttack: APGD-CE, "
                    "APGD-T, FAB-T, Square) or members joined by +, e.g. apgd-ce+apgd-t. A "
                    "trained run evaluated otherwise is evaluated again, not retrained.")
flags.DEFINE_integer("apgd_steps", 100, "Iterations of APGD-CE and of APGD-T per target.")
flags.DEFINE_integer("fab_steps", 100, "Iterations of FAB-T per target.")
flags.DEFINE_integer("square_queries", 5000, "Queries of the Square attack.")
flags.DEFINE_string("output_dir", None, "Where the tables and the plot go (default: --workdir).")
distributed.define_flag()
flags.adopt_module_key_flags(distributed)  # listed by --help with the command's own


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS["verbosity"].present == 0:
    logging.set_verbosity(logging.WARNING)
  if not distributed.initialize_from_flags():
    parallel.use_one_cpu_device_per_core([FLAGS.config.train.batch_size,
                                          FLAGS.config.eval.batch_size])
  request = runner.StudyRequest(
      config=FLAGS.config, workdir=FLAGS.workdir,
      methods=runner.parse_list(FLAGS.methods, str, "--methods"),
      seeds=runner.parse_list(FLAGS.seeds, int, "--seeds"),
      epochs=runner.parse_list(FLAGS.epochs or "", int, "--epochs"),
      curve_examples=FLAGS.curve_examples, report_only=FLAGS.report_only,
      autoattack_examples=FLAGS.autoattack_examples, apgd_steps=FLAGS.apgd_steps,
      fab_steps=FLAGS.fab_steps, square_queries=FLAGS.square_queries,
      cascade=FLAGS.cascade, output_dir=FLAGS.output_dir,
      command=provenance.command_line())
  runner.run_study(request)


if __name__ == "__main__":
  command_line.run(main, config_flag="config")
