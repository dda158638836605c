"""Draws training batches of an in-memory dataset on an N-device mesh and on a 1-device mesh.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8; prints the largest differences as
JSON. Used by tests/test_multi_device.py.
"""

import json
import sys

import jax
import numpy as np

from act_jax import parallel
from act_jax.data import catalog, in_memory


def main():
  data = np.random.default_rng(0)
  split = catalog.Split(data.integers(0, 256, (100, 8, 8, 3)).astype(np.uint8),
                         data.integers(0, 10, 100).astype(np.int32))
  batches = {}
  for devices in (jax.devices(), jax.devices()[:1]):
    stream = in_memory.InMemoryTrainData(split, global_batch_size=16, seed=5,
                                         mesh=parallel.make_mesh(devices), augment=True)
    batches[len(devices)] = [jax.device_get(stream.batch(step)) for step in (0, 3, 7, 13)]
  many, one = batches[len(jax.devices())], batches[1]
  json.dump({"num_devices": len(jax.devices()),
             "images": max(float(np.abs(a["image"] - b["image"]).max())
                           for a, b in zip(many, one, strict=True)),
             "labels": max(int(np.abs(a["label"] - b["label"]).max())
                           for a, b in zip(many, one, strict=True))}, sys.stdout)


if __name__ == "__main__":
  main()
