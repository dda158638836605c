"""One XLA:CPU device per core by default; an explicit choice of the user wins.

Each case runs in a subprocess: the device count is fixed when JAX starts its backend.
"""

import os
import subprocess
import sys

import pytest

from helpers import REPO

CORES = len(os.sched_getaffinity(0))
PROBE = ("import os, jax; from act_jax import parallel; "
         "set_to = parallel.use_one_cpu_device_per_core({batches}); "
         "print(set_to, jax.device_count(), os.environ.get('XLA_FLAGS', ''))")


def probe(batches, **environment) -> tuple[str, int, str]:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  env.update(environment, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  result = subprocess.run([sys.executable, "-c", PROBE.format(batches=batches)], env=env,
                          capture_output=True, text=True, check=True, cwd=REPO)
  set_to, count, flags = [*result.stdout.strip().split(" ", 2), ""][:3]
  return set_to, int(count), flags


def test_the_default_is_one_device_per_core():
  set_to, count, flags = probe([CORES * 64])
  assert (set_to, count) == (str(CORES), CORES)
  if CORES > 1:  # each device on its own core runs single-threaded, and waits for the others
    assert "--xla_cpu_multi_thread_eigen=false" in flags
    assert "--xla_cpu_collective_call_terminate_timeout_seconds=600" in flags


@pytest.mark.skipif(CORES < 2, reason="needs two cores to have a choice")
def test_the_count_divides_every_batch():
  """With a batch of 1 only one device can take its share."""
  set_to, count, flags = probe([CORES * 64, 1])
  assert (set_to, count) == ("1", 1)
  assert "multi_thread_eigen" not in flags  # one device keeps every core's threads


@pytest.mark.parametrize("environment", [
    {"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}, {"JAX_NUM_CPU_DEVICES": "3"}])
def test_an_explicit_choice_wins(environment):
  set_to, count, _ = probe([128], **environment)
  assert (set_to, count) == ("None", 3)
