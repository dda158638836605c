"""act-jax: Adversarial Concurrent Training (Arani, Sarfraz and Zonooz, BMVC 2020) in JAX/Flax.

Importing the package does not import TensorFlow; only ImageNet (and a first read of CIFAR) does.
"""

__version__ = "0.1.0"


def load_model(workdir: str, which: str | None = None):
  """See `act_jax.api.load_model`."""
  from act_jax import api  # imported here, so that `import act_jax` stays light
  return api.load_model(workdir, which)
