"""`python -m act_jax.evaluate --workdir=DIR ...`: see `act_jax.evaluate.cli`."""

from act_jax import command_line
from act_jax.evaluate import cli

if __name__ == "__main__":
  command_line.run(cli.main)
