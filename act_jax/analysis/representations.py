"""What the layers represent: features, effective rank, mutual information, CKA between models.

Features are the representations each model marks with `Classifier.representation` (every
conv layer or residual block, and the penultimate layer), read with `mutable=["intermediates"]`
in eval mode: the training graph is unchanged. Each example's representation is flattened to
one vector.

- `effective_rank(Z)`: exp of the entropy of the normalised singular values of the centred
  feature matrix Z [N, d] (Roy and Vetterli 2007): between 1 (one direction) and min(N, d)
  (all equal). A more compressed representation has a lower effective rank.
- `binned_mutual_information(Z)`: I(X; T) of a layer T by binning (Shwartz-Ziv and Tishby
  2017): every unit's value is put into one of `bins` equal bins spanning the layer's range
  over the examples, and since T is a deterministic function of the input, I(X; T) = H(T), the
  entropy (in bits) of the distinct binned patterns over the N examples, at most log2 N.
  Known sensitivity (Saxe et al. 2018): the value depends on the bin count and saturates at
  log2 N for any layer wide enough to give every example its own pattern, which is the case for
  most convolutional layers; differences are meaningful only between models of the same
  architecture at the same settings. The settings are fixed: 30 bins, the first N examples.
- `linear_cka(X, Y)`: linear centred kernel alignment (Kornblith et al. 2019) between two
  feature matrices of the same examples, <K_c, L_c> / (||K_c|| ||L_c||) with K = X X^T and
  L = Y Y^T centred: 1 for representations equal up to an orthogonal transform and isotropic
  scaling, near 0 for unrelated ones.
"""

from collections.abc import Callable
from typing import Any

import flax
import jax
import numpy as np

from act_jax.models.common import REPRESENTATIONS

MI_BINS = 30


def representations(apply_fn: Callable[..., Any], variables: Any, images: jax.Array
                    ) -> dict[str, jax.Array]:
  """Layer name -> [n, ...] representation of `images`, in eval mode, in the model's order."""
  _, state = apply_fn(variables, images, train=False, mutable=[REPRESENTATIONS])
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(state[REPRESENTATIONS]), sep="/")
  return {name.removesuffix("/output"): values[0] for name, values in flat.items()}


def _flat(features: np.ndarray) -> np.ndarray:
  return np.asarray(features, np.float64).reshape(len(features), -1)


def effective_rank(features: np.ndarray) -> float:
  """exp(entropy of the normalised singular values) of the centred [n, ...] features."""
  matrix = _flat(features)
  singular = np.linalg.svd(matrix - matrix.mean(axis=0), compute_uv=False)
  singular = singular[singular > singular.max() * 1e-12] if singular.max() > 0 else singular
  if singular.size == 0 or singular.sum() == 0:
    return 0.0
  p = singular / singular.sum()
  return float(np.exp(-np.sum(p * np.log(p))))


def binned_mutual_information(features: np.ndarray, bins: int = MI_BINS) -> float:
  """I(X; T) = H(T) in bits, T the layer binned into `bins` bins over its range."""
  matrix = _flat(features)
  low, high = matrix.min(), matrix.max()
  binned = (np.zeros(matrix.shape, np.int32) if high == low else
            np.minimum(((matrix - low) / (high - low) * bins).astype(np.int32), bins - 1))
  _, counts = np.unique(binned, axis=0, return_counts=True)
  p = counts / counts.sum()
  return float(-np.sum(p * np.log2(p)))


def linear_cka(first: np.ndarray, second: np.ndarray) -> float:
  """Linear CKA between two [n, ...] feature matrices of the same n examples."""
  x, y = _flat(first), _flat(second)
  x, y = x - x.mean(axis=0), y - y.mean(axis=0)
  gram_x, gram_y = x @ x.T, y @ y.T  # n x n, whatever the feature widths
  return float(np.sum(gram_x * gram_y) / (np.linalg.norm(gram_x) * np.linalg.norm(gram_y)))
