"""`python -m act_jax.plot_curves --workdir=WORKDIR [--output=PNG]`: the command line of
`act_jax.plot_curves`, whose drawing functions import no flags."""

from absl import app, flags
from etils import epath

from act_jax import command_line, reporting
from act_jax.errors import UserError
from act_jax.plot_curves import plot_curves

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The run whose results.json is drawn.", required=True)
flags.DEFINE_string("output", None,
                    "The PNG to write (default: WORKDIR/training_curves.png).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  results_path = epath.Path(FLAGS.workdir) / "results.json"
  if not results_path.exists():
    raise UserError(f"{results_path} not found: is {FLAGS.workdir} an act_jax workdir?")
  output = FLAGS.output or str(epath.Path(FLAGS.workdir) / "training_curves.png")
  plot_curves(reporting.read_json(results_path), output)
  print(f"wrote {output}", flush=True)


if __name__ == "__main__":
  command_line.run(main)
