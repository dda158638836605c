"""`python -m act_jax.export --workdir=RUN --output=DIR`: see `act_jax.export.cli`."""

from absl import flags

from act_jax import command_line
from act_jax.export import cli

# The flags are defined in `cli`; --help lists those of the module run, so it adopts them.
flags.adopt_module_key_flags(cli)

if __name__ == "__main__":
  command_line.run(cli.main)
