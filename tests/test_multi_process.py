"""Multi-host data parallelism, simulated: 2 processes x 2 CPU devices against 1 process x 4.

Each run is the real command line (`python -m act_jax.main`) on the real Fashion-MNIST files,
shrunk to a few steps. The two-process run joins through `jax.distributed` on 127.0.0.1 with
gloo collectives, exactly as `--distributed=auto` does when a launcher sets the JAX_* variables.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from helpers import HAS_REAL_FASHION_MNIST, NEEDS_REAL_FASHION_MNIST, REAL_FASHION_MNIST_DIR, REPO

pytestmark = pytest.mark.skipif(not HAS_REAL_FASHION_MNIST, reason=NEEDS_REAL_FASHION_MNIST)

RUN_TIMEOUT_S = 900


def free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def train(workdir, data_dir, *, processes: int, devices_per_process: int,
          max_steps: int) -> list[str]:
  """Runs the CLI as `processes` processes of `devices_per_process` CPU devices; their stdouts."""
  command = [sys.executable, "-m", "act_jax.main", "--config=configs/fashion_mnist.py",
             f"--workdir={workdir}", f"--config.dataset.data_dir={data_dir}",
             "--config.model.base_width=8", "--config.train.batch_size=32",
             f"--config.train.max_steps={max_steps}", "--config.train.log_every_steps=1",
             "--config.attack.num_steps=3", "--config.eval.num_steps=3",
             "--config.eval.num_examples=256", "--config.eval.batch_size=64"]
  environment = dict(os.environ, PYTHONPATH=REPO,
                     XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    environment.pop(name, None)
  if processes > 1:
    environment.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}",
                       JAX_NUM_PROCESSES=str(processes))
  runs = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, env=dict(environment, JAX_PROCESS_ID=str(index)))
          for index in range(processes)]
  outputs = []
  for index, run in enumerate(runs):
    output, _ = run.communicate(timeout=RUN_TIMEOUT_S)
    assert run.returncode == 0, f"process {index} of {processes} failed:\n{output[-5000:]}"
    outputs.append(output)
  return outputs


def results(workdir) -> dict:
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


def logits(workdir, which: str) -> np.ndarray:
  """The restored model's logits on the first 64 test images (restored onto this process's CPU)."""
  import act_jax
  from act_jax.data import fashion_mnist
  images, _ = fashion_mnist.read_split(REAL_FASHION_MNIST_DIR, "test")
  batch = images[:64, ..., None].astype(np.float32) / 255.0
  return np.asarray(act_jax.load_model(str(workdir), which=which)(batch))


def assert_logs_close(actual: list[dict], expected: list[dict], rtol: float, atol: float = 1e-6,
                      accuracy_atol: float = 0.0) -> None:
  assert [entry["step"] for entry in actual] == [entry["step"] for entry in expected]
  for got, want in zip(actual, expected, strict=True):
    for key in want:
      if key != "images_per_second":
        tolerance = max(atol, accuracy_atol) if key.endswith("/accuracy") else atol
        np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=tolerance, err_msg=key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """2x2 and 1x4 runs of 3 steps on one shared TFDS dir, which the 2-process run prepares."""
  root = tmp_path_factory.mktemp("multi_process")
  data_dir = root / "tfds"
  two_hosts, one_host = root / "two_processes", root / "one_process"
  outputs = train(two_hosts, data_dir, processes=2, devices_per_process=2, max_steps=3)
  train(one_host, data_dir, processes=1, devices_per_process=4, max_steps=3)
  return {"root": root, "data_dir": data_dir, "two_hosts": two_hosts, "one_host": one_host,
          "outputs": outputs}


def test_two_processes_train_as_one(runs):
  """Per-step losses and accuracies, the final evaluation and both models agree.

  The global batches are identical by construction (see act_jax/data/pipeline.py), so the remaining
  differences are float summation order in the cross-process reductions.
  """
  two, one = results(runs["two_hosts"]), results(runs["one_host"])
  assert len(two["train_log"]) == 3
  assert_logs_close(two["train_log"], one["train_log"], rtol=1e-5)
  for name in ("natural", "robust"):
    for kind in ("clean", "pgd3"):  # at most one of 256 examples may flip on a rounding tie
      assert abs(two["final"]["accuracy"][name][kind]
                 - one["final"]["accuracy"][name][kind]) <= 1 / 256
    np.testing.assert_allclose(logits(runs["two_hosts"], name), logits(runs["one_host"], name),
                               rtol=1e-4, atol=1e-4)
  # Only process 0 reports: evaluations and the table are printed once.
  assert "PGD-3" in runs["outputs"][0]
  assert "PGD-3" not in runs["outputs"][1]


def test_a_two_process_checkpoint_resumes_in_one_process_on_one_device(runs):
  """The 2x2 checkpoint continues on 1x1 as the 1x4 checkpoint continues on 1x4."""
  resumed_two, resumed_one = runs["root"] / "resumed_two", runs["root"] / "resumed_one"
  shutil.copytree(runs["two_hosts"], resumed_two)
  shutil.copytree(runs["one_host"], resumed_one)
  (output,) = train(resumed_two, runs["data_dir"], processes=1, devices_per_process=1,
                    max_steps=5)
  train(resumed_one, runs["data_dir"], processes=1, devices_per_process=4, max_steps=5)
  assert "Resuming from step 3" in output
  log = results(resumed_two)["train_log"]
  assert [entry["step"] for entry in log] == [1, 2, 3, 4, 5]
  assert_logs_close(log[:3], results(runs["two_hosts"])["train_log"], rtol=0)
  # One device convolves the whole batch where four convolve quarters, so the rounding differs,
  # and the attack's sign() turns a near-zero gradient's rounding into a whole step on one
  # pixel: the resumed steps agree to 1e-3 (one example of 32 may flip), not to the 1e-5 of
  # equal topologies. A wrong restore (other weights, optimiser state or step) moves the losses
  # by far more.
  assert_logs_close(log, results(resumed_one)["train_log"], rtol=1e-3, atol=1e-3,
                    accuracy_atol=1 / 32)
  for name in ("natural", "robust"):
    np.testing.assert_allclose(logits(resumed_two, name), logits(resumed_one, name),
                               rtol=1e-3, atol=1e-3)
