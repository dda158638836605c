"""Host-side evaluation loop: clean and PGD accuracy of both models over a test split."""

from typing import Any, Callable, Iterable

import jax
import numpy as np
from jax.sharding import Mesh

from act_jax import parallel
from act_jax.train_state import ACTState

Evaluation = dict[str, Any]


def evaluate(distributed_eval_step: Callable, state: ACTState, batches: Iterable[dict[str, np.ndarray]],
             mesh: Mesh, rng: jax.Array) -> Evaluation:
  """Accuracies {"natural": {"clean", "pgd"}, "robust": {...}} as fractions of real examples.

  Per-batch sums stay on the devices until the end; the host fetches them once.
  """
  sums = None
  for batch_index, batch in enumerate(batches):
    counts = distributed_eval_step(state, parallel.shard_host_batch(batch, mesh),
                                   jax.random.fold_in(rng, batch_index))
    sums = counts if sums is None else jax.tree.map(lambda a, b: a + b, sums, counts)
  if sums is None:
    raise ValueError("the evaluation split yielded no batches")
  sums = parallel.fetch_replicated(sums)
  count = float(sums["count"])
  return {name: {kind: float(sums[f"{name}/{kind}_correct"]) / count for kind in ("clean", "pgd")}
          for name in ("natural", "robust")} | {"num_examples": int(count)}
