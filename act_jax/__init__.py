"""act-jax: Adversarial Concurrent Training (Arani, Sarfraz and Zonooz, BMVC 2020) in JAX/Flax.

Importing the package does not import TensorFlow; only the input pipeline does, lazily.
"""

__version__ = "0.1.0"


def load_model(workdir: str, which: str = "robust"):
  """See `act_jax.api.load_model`."""
  from act_jax import api  # imported here, so that `import act_jax` stays light
  return api.load_model(workdir, which)
