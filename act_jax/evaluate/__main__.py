"""`python -m act_jax.evaluate --workdir=DIR ...`: see `act_jax.evaluate.cli`."""

from absl import app

from act_jax.evaluate import cli

if __name__ == "__main__":
  app.run(cli.main)
