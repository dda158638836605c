"""`python -m act_jax.evaluate --workdir=DIR ...`: see `act_jax.evaluate.cli`."""

from absl import flags

from act_jax import command_line, distributed
from act_jax.evaluate import cli

# The flags are defined in `cli`; --help lists those of the module run, so it adopts them.
flags.adopt_module_key_flags(cli)
flags.adopt_module_key_flags(distributed)

if __name__ == "__main__":
  command_line.run(cli.main)
