"""Runs the evaluator's attack suite on an N-device mesh and on a 1-device mesh, same examples.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8; prints both accuracy tables as JSON.
Used by tests/test_multi_device.py.
"""

import itertools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from act_jax import parallel
from act_jax.attacks import specs
from act_jax.data import catalog, pipeline
from act_jax.evaluate.evaluator import Evaluator

NAMES = ("clean", "fgsm", "pgd5", "pgd5-l2", "apgd-ce", "apgd-t", "autoattack", "transfer")


def apply_fn(variables, images):
  hidden = jnp.tanh(images.reshape(images.shape[0], -1) @ variables["w1"])
  return hidden @ variables["w2"]


def main():
  data = np.random.default_rng(0)
  models = {name: {"w1": jnp.asarray(data.normal(size=(16, 8)), jnp.float32),
                   "w2": jnp.asarray(data.normal(size=(8, 5)), jnp.float32)}
            for name in ("natural", "robust")}
  # 29 examples in batches of 16: the last batch is padded, as evaluation batches are.
  split = catalog.Split(data.uniform(size=(29, 4, 4, 1)).astype(np.float32),
                         data.integers(0, 5, 29).astype(np.int32))
  results = {}
  # Unrolled, as on CPU, with 30 APGD and FAB steps: APGD, APGD-T and FAB-T then run in parts
  # (two of 15), their state sharded over the devices between calls.
  for devices, unroll in itertools.product((jax.devices(), jax.devices()[:1]), (False, True)):
    settings = specs.AttackSettings(eps=0.2, eps_l2=0.8, pgd_travel=2.5,
                                    apgd_steps=30 if unroll else 10,
                                    fab_steps=30 if unroll else 100, unroll=unroll)
    mesh = parallel.make_mesh(devices)
    evaluator = Evaluator(apply_fn, mesh, specs.parse_names(",".join(NAMES)), settings)
    result = evaluator(parallel.replicate(models, mesh),
                       pipeline.in_memory_eval_data(split, per_process_batch_size=16),
                       jax.random.PRNGKey(0))
    results[f"{len(devices)}{'_unrolled' if unroll else ''}"] = {
        "accuracy": result.accuracy, "num_examples": result.num_examples,
        "attacked": result.attacked}
  json.dump(results, sys.stdout)


if __name__ == "__main__":
  main()
