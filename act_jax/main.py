"""Command line: `python -m act_jax.main --config=fashion_mnist --workdir=DIR`.

`--config` is a shipped recipe's name (configs/<name>.py) or any config file's path.

Any config field can be overridden, e.g. `--config.train.epochs=3 --config.attack.eps=0.05`.
Running the same command again resumes from the newest checkpoint in DIR. On a TPU pod or a GPU
cluster every process runs this same command (see launch/); `--distributed` says whether to
join the others first. A single process on CPU gets one XLA device per core unless
XLA_FLAGS=--xla_force_host_platform_device_count=N or JAX_NUM_CPU_DEVICES=N says otherwise.
"""

import jax
from absl import app, flags, logging

from act_jax import command_line, distributed, parallel, train
from act_jax.study import report as study_report

FLAGS = flags.FLAGS
command_line.define_config_flag("The run's config.")
flags.DEFINE_string("workdir", None, "Where checkpoints, TensorBoard logs and results.json go.",
                    required=True)
flags.DEFINE_string("compare_to", None,
                    "A study.json of the same recipe (python -m act_jax.study) whose numbers are "
                    "printed beside the final table, e.g. docs/study/fashion_mnist/study.json.")
distributed.define_flag()
flags.adopt_module_key_flags(distributed)  # listed by --help with the command's own


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.is_parsed() or FLAGS["verbosity"].present == 0:
    logging.set_verbosity(logging.WARNING)  # orbax and TFDS log every file operation at INFO
  if not distributed.initialize_from_flags():
    parallel.use_one_cpu_device_per_core([FLAGS.config.train.batch_size,
                                          FLAGS.config.eval.batch_size])
  results = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  if "final" in results and FLAGS.compare_to and jax.process_index() == 0:
    for line in study_report.comparison_lines(FLAGS.compare_to, FLAGS.config):
      print(line, flush=True)


if __name__ == "__main__":
  command_line.run(main, config_flag="config")
