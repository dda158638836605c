"""Multi-host data parallelism, simulated: 2 processes x 2 CPU devices against 1 process x 4.

Each run is the real command line (`python -m act_jax.main`) on the real Fashion-MNIST files,
shrunk to a few steps. The two-process run joins through `jax.distributed` on 127.0.0.1 with
gloo collectives, exactly as `--distributed=auto` does when a launcher sets the JAX_* variables.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import HAS_REAL_FASHION_MNIST, NEEDS_REAL_FASHION_MNIST, REAL_FASHION_MNIST_DIR, REPO

pytestmark = [pytest.mark.skipif(not HAS_REAL_FASHION_MNIST, reason=NEEDS_REAL_FASHION_MNIST),
              pytest.mark.slow]

RUN_TIMEOUT_S = 900


def free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def training_arguments(workdir, data_dir, max_steps: int, flags: tuple[str, ...] = ()
                       ) -> list[str]:
  """`act_jax.main` on a small recipe of Fashion-MNIST, shrunk to a few steps."""
  return ["act_jax.main", "--config=configs/fashion_mnist.py", f"--workdir={workdir}",
          *SMALL_RECIPE, f"--config.dataset.data_dir={data_dir}",
          f"--config.train.max_steps={max_steps}", *flags]


SMALL_RECIPE = ("--config.model.base_width=8", "--config.train.batch_size=32",
                "--config.train.log_every_steps=1", "--config.attack.num_steps=3",
                "--config.eval.num_steps=3", "--config.eval.num_examples=256",
                "--config.eval.batch_size=64")


def launch_module(arguments: list[str], *, processes: int, devices_per_process: int
                  ) -> list[subprocess.Popen]:
  """Starts `python -m <arguments>` as `processes` processes of `devices_per_process` CPU
  devices each, joined as a launcher joins them (the JAX_* variables)."""
  environment = dict(os.environ, PYTHONPATH=REPO,
                     XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    environment.pop(name, None)
  if processes > 1:
    environment.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}",
                       JAX_NUM_PROCESSES=str(processes))
  return [subprocess.Popen([sys.executable, "-m", *arguments], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=dict(environment, JAX_PROCESS_ID=str(index)))
          for index in range(processes)]


def launch(workdir, data_dir, *, processes: int, devices_per_process: int, max_steps: int,
           flags: tuple[str, ...] = ()) -> list[subprocess.Popen]:
  """Starts training (see `training_arguments`) in `processes` processes."""
  return launch_module(training_arguments(workdir, data_dir, max_steps, flags),
                       processes=processes, devices_per_process=devices_per_process)


def finish(runs: list[subprocess.Popen]) -> list[str]:
  """Waits for every process; their outputs, after asserting that each exited 0."""
  outputs = []
  for index, run in enumerate(runs):
    output, _ = run.communicate(timeout=RUN_TIMEOUT_S)
    assert run.returncode == 0, f"process {index} of {len(runs)} failed:\n{output[-5000:]}"
    outputs.append(output)
  return outputs


def train(workdir, data_dir, **kwargs) -> list[str]:
  """Runs the CLI to its end (see `launch`); the processes' outputs."""
  return finish(launch(workdir, data_dir, **kwargs))


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


def wait_for_checkpoint(workdir, step: int, runs: list[subprocess.Popen]) -> None:
  """Returns once checkpoint `step` is committed in `workdir`, or fails if the runs ended."""
  directory = workdir / "checkpoints" / str(step)
  deadline = time.monotonic() + RUN_TIMEOUT_S
  while not (directory / "_CHECKPOINT_METADATA").exists():
    if any(run.poll() is not None for run in runs):
      outputs = "\n".join(run.communicate()[0][-3000:] for run in runs)
      pytest.fail(f"the run ended before checkpoint {step} was written:\n{outputs}")
    assert time.monotonic() < deadline, f"no checkpoint {step} after {RUN_TIMEOUT_S} s"
    time.sleep(0.2)


# Two devices per process adds nothing to the periodic actions that one device and the 2x2
# fixture runs above do not test, so CI runs one device per process; the full tier runs both.
@pytest.mark.parametrize("devices_per_process", [1, pytest.param(2, marks=pytest.mark.full)])
def test_every_periodic_action_of_the_loop_runs_in_two_processes(tmp_path, devices_per_process):
  """Two processes log, evaluate, write scheduled checkpoints, stop together on SIGTERM, and the
  run resumes in two processes and in one.

  Scheduled checkpoints are the delayed, finite-checked copies of the state; the final one is
  written directly, so a run of a few steps never exercises them. Resumed in two processes, the
  run equals an uninterrupted one step for step. Resumed in one process of as many devices, it
  equals it too when each process had one device (the cross-device sums then add in the same
  order); with two devices per process the sums' order differs, the attack's sign() turns that
  rounding into whole steps on single pixels within a few steps (measured: from step 4 on), and
  only the first steps after the resumption are compared, as in the test above.
  """
  data_dir = tmp_path / "tfds"
  topology = dict(processes=2, devices_per_process=devices_per_process)
  max_steps = 60
  periodic = ("--config.train.checkpoint_every_steps=4", "--config.train.eval_every_steps=20",
              "--config.train.max_checkpoints_to_keep=30", "--config.eval.num_examples=64")
  reference = tmp_path / "uninterrupted"
  train(reference, data_dir, **topology, max_steps=max_steps, flags=periodic)
  expected = results(reference)
  assert sorted(int(name) for name in os.listdir(reference / "checkpoints")) == sorted(
      {*range(4, max_steps, 4), max_steps})
  assert [e["step"] for e in expected["evaluations"]] == [20, 40, 60]

  preempted = tmp_path / "preempted"
  runs = launch(preempted, data_dir, **topology, max_steps=max_steps, flags=periodic)
  wait_for_checkpoint(preempted, 8, runs)
  for run in runs:  # as a scheduler preempts a job: every process gets SIGTERM
    run.send_signal(signal.SIGTERM)
  outputs = finish(runs)
  log = results(preempted)["train_log"]
  stopped = log[-1]["step"]
  assert f"Stopped at step {stopped}" in outputs[0], "\n".join(
      line for output in outputs for line in output.splitlines()
      if "SIGTERM" in line or "preemption" in line or "Stopped" in line)
  assert 8 < stopped < max_steps, "the signal must stop the run between its checkpoints and end"
  assert sorted(int(name) for name in os.listdir(preempted / "checkpoints")) == sorted(
      {*range(4, stopped, 4), stopped})
  assert_logs_close(log, expected["train_log"][:stopped], rtol=1e-5)

  in_two, in_one = tmp_path / "resumed_in_two", tmp_path / "resumed_in_one"
  shutil.copytree(preempted, in_two)
  shutil.copytree(preempted, in_one)
  (two_output, _) = train(in_two, data_dir, **topology, max_steps=max_steps, flags=periodic)
  (one_output,) = train(in_one, data_dir, processes=1, devices_per_process=2 * devices_per_process,
                        max_steps=max_steps, flags=periodic)
  for workdir, output in ((in_two, two_output), (in_one, one_output)):
    assert f"Resuming from step {stopped}" in output
    got = results(workdir)
    assert got["train_log"][:stopped] == log
    assert [e["step"] for e in got["evaluations"]] == [e["step"] for e in expected["evaluations"]]
    assert sorted(int(name) for name in os.listdir(workdir / "checkpoints")) == sorted(
        {*range(4, max_steps, 4), stopped, max_steps})

  def assert_equals_uninterrupted(got: dict) -> None:
    assert_logs_close(got["train_log"], expected["train_log"], rtol=1e-5)
    for name in ("natural", "robust"):
      for kind in ("clean", "pgd3"):  # at most one of 64 examples may flip on a rounding tie
        assert abs(got["final"]["accuracy"][name][kind]
                   - expected["final"]["accuracy"][name][kind]) <= 1 / 64

  assert_equals_uninterrupted(results(in_two))
  if devices_per_process == 1:
    assert_equals_uninterrupted(results(in_one))
  else:
    assert_logs_close(results(in_one)["train_log"][:stopped + 2],
                      expected["train_log"][:stopped + 2], rtol=1e-3, atol=1e-3,
                      accuracy_atol=1 / 32)


def test_evaluate_in_two_processes_equals_one(runs, tmp_path):
  """`python -m act_jax.evaluate` over 2 processes x 2 devices gives the 1 x 4 numbers."""
  reports = {}
  for processes, devices in ((2, 2), (1, 4)):
    output = tmp_path / f"robustness_{processes}.json"
    finish(launch_module(
        ["act_jax.evaluate", f"--workdir={runs['two_hosts']}", "--attacks=clean,pgd3,apgd-ce",
         "--num_examples=64", "--batch_size=32", "--apgd_steps=3", "--eps_sweep=0.1",
         "--sweep_attack=fgsm",
         f"--output={output}"], processes=processes, devices_per_process=devices))
    with open(output) as f:
      reports[processes] = json.load(f)
  two, one = reports[2], reports[1]
  assert two["num_examples"] == one["num_examples"] == 64
  for model in ("natural", "robust"):
    for attack, accuracy in one["accuracy"][model].items():
      assert abs(two["accuracy"][model][attack] - accuracy) <= 1 / 64, (model, attack)
    np.testing.assert_allclose(two["eps_sweep"]["accuracy"][model],
                               one["eps_sweep"]["accuracy"][model], atol=1 / 64)


def test_a_study_in_two_processes_equals_one(runs, tmp_path):
  """The study (training, its evaluation and AutoAttack) over 2 processes x 2 devices gives the
  1 x 4 study's numbers."""
  studies = {}
  for processes, devices in ((2, 2), (1, 4)):
    workdir = tmp_path / f"study_{processes}"
    outputs = finish(launch_module(
        ["act_jax.study", "--config=configs/fashion_mnist.py", f"--workdir={workdir}",
         "--methods=act", "--seeds=0", "--autoattack_examples=32", "--apgd_steps=3",
         "--fab_steps=2", "--square_queries=20", "--curve_examples=0", *SMALL_RECIPE,
         "--config.eval.num_steps=20",
         "--config.eval.num_examples=64", "--config.train.max_steps=3",
         f"--config.dataset.data_dir={runs['data_dir']}"],
        processes=processes, devices_per_process=devices))
    if processes > 1:
      assert "| method" in outputs[0] and "| method" not in outputs[1]  # one report
    with open(workdir / "study.json") as f:
      studies[processes] = json.load(f)
  two, one = studies[2]["runs"], studies[1]["runs"]
  assert [(r["method"], r["model"]) for r in two] == [(r["method"], r["model"]) for r in one]
  for got, want in zip(two, one, strict=True):
    assert abs(got["clean"] - want["clean"]) <= 1 / 64
    assert abs(got["pgd20"] - want["pgd20"]) <= 1 / 64
    assert abs(got["autoattack"] - want["autoattack"]) <= 1 / 32


LOST_PROCESS_BOUND_S = 60  # the roll call takes 5 s; the rest is slack for a loaded machine


def test_a_lost_process_stops_the_other_in_one_line_and_both_resume(tmp_path):
  """kill -9 of process 1 mid-training: process 0 sees its collective fail, names the lost
  process in one line and exits 5 at once (not at JAX's exit barrier, which waited for the
  heartbeat timeout and then aborted with a dump); restarted, both resume."""
  data_dir, workdir = tmp_path / "tfds", tmp_path / "run"
  topology = dict(processes=2, devices_per_process=1)
  flags = ("--config.train.checkpoint_every_steps=4", "--config.eval.num_examples=64",
           "--config.train.max_checkpoints_to_keep=100")
  runs = launch(workdir, data_dir, **topology, max_steps=100000, flags=flags)
  try:
    wait_for_checkpoint(workdir, 8, runs)
    runs[1].kill()
    killed = time.monotonic()
    output, _ = runs[0].communicate(timeout=RUN_TIMEOUT_S)
    took = time.monotonic() - killed
  finally:
    for run in runs:
      run.kill()
  errors = [line for line in output.splitlines() if line.startswith("error: ")]
  assert runs[0].returncode == 5 and len(errors) == 1, output[-3000:]
  assert "process 0: process 1 of 2 stopped answering" in errors[0]
  assert "restart every process with the same command" in errors[0]
  assert "Traceback" not in output and "Fatal Python error" not in output, output[-3000:]
  assert took < LOST_PROCESS_BOUND_S, took
  newest = max(int(name) for name in os.listdir(workdir / "checkpoints") if name.isdigit())
  outputs = train(workdir, data_dir, **topology, max_steps=newest + 4, flags=flags)
  assert f"Resuming from step {newest}" in outputs[0]
  assert [entry["step"] for entry in results(workdir)["train_log"]] == list(
      range(1, newest + 5))
