"""act-jax: Adversarial Concurrent Training (Arani, Sarfraz and Zonooz, BMVC 2020) in JAX/Flax.

Importing the package does not import TensorFlow; only ImageNet (and a first read of CIFAR) does.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
  """`act_jax.load_model` is `act_jax.api.load_model`, imported on first use, so that
  `import act_jax` stays light (and its warnings point at the caller's line)."""
  if name == "load_model":
    from act_jax import api
    return api.load_model
  raise AttributeError(f"module 'act_jax' has no attribute {name!r}")
