"""Runs one ACT train step on an N-device mesh and on a 1-device mesh over the same global batch.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8; prints the largest differences as
JSON. Used by tests/test_multi_device.py (in a subprocess, since the device count is fixed when
jax is imported).
"""

import functools
import json
import sys

import jax
import ml_collections
import numpy as np

from act_jax import models, optimizers, parallel
from act_jax.methods.act import ACTHyperparams, train_step
from act_jax.methods.common import AttackBudget
from act_jax.train_state import create_act_state

from helpers import with_model

GLOBAL_BATCH = 16
OPTIM = ml_collections.ConfigDict(dict(learning_rate=0.1, momentum=0.9, weight_decay=5e-4,
                                       lr_decay_epochs=(), lr_decay_factor=0.1))
HP = ACTHyperparams(natural_alpha=0.9, robust_alpha=0.9, temperature=4.0,
                    attack_loss_reduction="reference",
                    attack=AttackBudget(eps=0.1, step_size=0.02, num_steps=3))


def run(devices, state, batch, rng, bn_axis_name="data"):
  model = models.build_model("small_cnn", num_classes=10, base_width=4, bn_axis_name=bn_axis_name)
  mesh = parallel.make_mesh(devices)
  step = parallel.distribute_train_step(functools.partial(
      train_step, hp=HP, learning_rate_fn=optimizers.learning_rate_schedule(OPTIM, 10)), mesh)
  state = parallel.replicate(with_model(state, model), mesh)
  batch = parallel.shard_host_batch(batch, mesh)
  new_state, metrics = step(state, batch, parallel.replicate(rng, mesh))
  return jax.device_get(new_state), jax.device_get(metrics)


def main():
  model = models.build_model("small_cnn", num_classes=10, base_width=4)
  tx = optimizers.sgd_with_coupled_weight_decay(
      OPTIM, optimizers.learning_rate_schedule(OPTIM, 10))
  state = jax.device_get(create_act_state(model, tx, jax.random.PRNGKey(0), (12, 12, 1)))
  data = np.random.default_rng(0)
  batch = {"image": data.uniform(size=(GLOBAL_BATCH, 12, 12, 1)).astype(np.float32),
           "label": data.integers(0, 10, GLOBAL_BATCH).astype(np.int32)}
  rng = jax.random.PRNGKey(1)
  many_state, many_metrics = run(jax.devices(), state, batch, rng)
  one_state, one_metrics = run(jax.devices()[:1], state, batch, rng)
  # Per-device BatchNorm (model.sync_batch_norm=False): each device normalises over its own
  # shard, and the running statistics are averaged over devices after the step.
  local_state, _ = run(jax.devices(), state, batch, rng, bn_axis_name=None)
  shards = np.split(batch["image"], len(jax.devices()))
  per_shard_stats = [model.apply({"params": state.natural.params,
                                  "batch_stats": state.natural.batch_stats}, shard, train=True,
                                 mutable=["batch_stats"])[1]["batch_stats"] for shard in shards]
  expected_local_stats = jax.tree.map(lambda *s: np.mean(s, axis=0), *per_shard_stats)
  max_diff = lambda a, b: max(float(np.max(np.abs(x - y))) for x, y in
                              zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
  json.dump({"num_devices": len(jax.devices()),
             "params": max_diff(many_state.natural.params, one_state.natural.params),
             "robust_params": max_diff(many_state.robust.params, one_state.robust.params),
             "batch_stats": max_diff(
                 (many_state.natural.batch_stats, many_state.robust.batch_stats),
                 (one_state.natural.batch_stats, one_state.robust.batch_stats)),
             "metrics": max_diff(many_metrics, one_metrics),
             "update_size": max_diff(one_state.natural.params, state.natural.params),
             "per_device_bn": max_diff(local_state.natural.batch_stats, expected_local_stats),
             "per_device_vs_sync_bn": max_diff(local_state.natural.batch_stats,
                                               one_state.natural.batch_stats)},
            sys.stdout)


if __name__ == "__main__":
  main()
