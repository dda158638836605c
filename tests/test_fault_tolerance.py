"""Fault tolerance, with real processes, signals and files on the real Fashion-MNIST pipeline.

Each guarantee in the README's "Fault tolerance" section has its test here: a diverged run stops
without saving its state; a refused config change leaves the workdir byte for byte as it was; a
damaged newest checkpoint falls back to an intact one; a missing dataset fails in seconds;
expected mistakes get one line, not a traceback; SIGTERM and SIGINT exit within 5 s of the
checkpoint's commit; kill -9 loses no log entry up to the checkpoint it resumes from.
"""

import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import HAS_REAL_FASHION_MNIST, NEEDS_REAL_FASHION_MNIST, REPO

pytestmark = pytest.mark.skipif(not HAS_REAL_FASHION_MNIST, reason=NEEDS_REAL_FASHION_MNIST)

TINY = ["--config=configs/fashion_mnist.py", "--config.model.base_width=4",
        "--config.attack.num_steps=2", "--config.eval.num_steps=3",
        "--config.eval.num_examples=64",
        "--config.eval.batch_size=64", "--config.train.batch_size=32",
        "--config.train.log_every_steps=1"]
PROMPT_EXIT_S = 5.0


def command(workdir, *flags, module="act_jax.main") -> list[str]:
  return [sys.executable, "-m", module, f"--workdir={workdir}", *flags]


def run(arguments, timeout=600) -> subprocess.CompletedProcess:
  return subprocess.run(arguments, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                        env=dict(os.environ, PYTHONPATH=REPO))


def train(workdir, *flags, timeout=600) -> subprocess.CompletedProcess:
  return run(command(workdir, *TINY, *flags), timeout)


def assert_one_line_error(result, *fragments, exit_code=2) -> str:
  assert result.returncode == exit_code, result.stderr[-3000:]
  lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error: ")]
  assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  for fragment in fragments:
    assert fragment in lines[0], lines[0]
  return lines[0]


def strict_json(path) -> dict:
  """Parses as strict JSON: a bare NaN or Infinity token raises."""
  def refuse(token):
    raise ValueError(f"{path}: non-standard JSON token {token}")
  with open(path) as f:
    return json.load(f, parse_constant=refuse)


def checkpoint_steps(workdir) -> list[int]:
  return sorted(int(os.path.basename(os.path.dirname(path))) for path in
                glob.glob(os.path.join(workdir, "checkpoints", "*", "commit_success.txt")))


def workdir_digest(workdir) -> dict[str, str]:
  digest = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        digest[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
  return digest


def logits(workdir, which=None) -> np.ndarray:
  code = ("import act_jax, numpy as np, sys; "
          f"print(np.asarray(act_jax.load_model({str(workdir)!r}, {which!r})"
          "(np.full((2, 28, 28, 1), 0.5, np.float32))).tolist())")
  result = run([sys.executable, "-c", code])
  assert result.returncode == 0, result.stderr[-3000:]
  return np.asarray(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.slow
def test_a_diverged_run_stops_without_saving_its_state(tmp_path):
  """The learning rate jumps to 5e28 at step 8 (a schedule 'decay' of 1e30 at epoch 0.004 of
  1875 steps), so the state after step 8 diverges. The run names the step, the model and the
  term, exits non-zero and leaves strict JSON. The newest checkpoint is the last state whose
  next step still had finite losses: step 7, whose model computes finite logits."""
  workdir = tmp_path / "diverged"
  result = train(workdir, "--config.optim.learning_rate=0.05",
                 "--config.optim.lr_decay_factor=1e30", "--config.optim.lr_decay_epochs=(0.004,)",
                 "--config.train.max_steps=30", "--config.train.checkpoint_every_steps=1")
  line = assert_one_line_error(result, "model's", "not finite", exit_code=3)
  stopped = strict_json(workdir / "results.json")["stopped"]["step"]
  assert stopped in (9, 10) and line.startswith(f"error: step {stopped}: "), line
  assert max(checkpoint_steps(workdir)) == stopped - 2
  assert f"newest checkpoint: step {stopped - 2}" in line
  assert "final" not in strict_json(workdir / "results.json")
  assert np.isfinite(logits(workdir)).all()


@pytest.mark.slow
def test_load_model_refuses_non_finite_weights(tmp_path):
  """A checkpoint whose weights are NaN (as older versions could save) is refused."""
  workdir = tmp_path / "nan_weights"
  assert train(workdir, "--config.train.max_steps=2").returncode == 0
  code = f"""
import jax, jax.numpy as jnp
from act_jax import api, checkpointing, parallel
run = api.load_run({str(workdir)!r})
nan_state = jax.tree.map(lambda x: x * jnp.nan if jnp.issubdtype(x.dtype, jnp.floating) else x,
                         run.state)
manager = checkpointing.checkpoint_manager({str(workdir)!r}, max_to_keep=None)
checkpointing.save(manager, nan_state, parallel.replicate(jax.random.PRNGKey(0),
                   parallel.make_mesh(jax.devices()[:1])),
                   3)
manager.wait_until_finished()
"""
  assert run([sys.executable, "-c", code]).returncode == 0
  result = run([sys.executable, "-c", f"import act_jax; act_jax.load_model({str(workdir)!r})"])
  assert result.returncode != 0
  assert "checkpoint step 3" in result.stderr and "non-finite weights" in result.stderr
  evaluation = run(command(workdir, "--attacks=clean", "--eps_sweep=", module="act_jax.evaluate"))
  assert_one_line_error(evaluation, "non-finite weights")


@pytest.mark.slow
def test_a_refused_config_change_leaves_the_workdir_byte_identical(tmp_path):
  workdir = tmp_path / "finished"
  assert train(workdir, "--config.train.max_steps=3").returncode == 0
  before = workdir_digest(workdir)
  result = train(workdir, "--config.train.max_steps=3", "--config.model.base_width=8")
  assert_one_line_error(result, "model.base_width (4 -> 8)", "nothing was changed")
  assert workdir_digest(workdir) == before
  # A safe change (more steps) continues the run and is recorded.
  resumed = train(workdir, "--config.train.max_steps=5")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Continuing with changed settings: train.max_steps 3 -> 5" in resumed.stdout
  changes = strict_json(workdir / "results.json")["config_changes"]
  assert changes == [{"step": 3, "changes": {"train.max_steps": [3, 5]}}]


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated_file", "missing_metadata"])
def test_a_damaged_newest_checkpoint_falls_back_to_an_intact_one(tmp_path, damage):
  workdir = tmp_path / damage
  assert train(workdir, "--config.train.max_steps=6", "--config.train.checkpoint_every_steps=3",
               "--config.train.max_checkpoints_to_keep=5").returncode == 0
  assert checkpoint_steps(workdir) == [3, 6]
  state_dir = workdir / "checkpoints" / "6" / "state"
  if damage == "truncated_file":
    data = sorted(p for p in glob.glob(str(state_dir / "d" / "*")) if os.path.getsize(p) > 100)
    with open(data[0], "r+b") as f:
      f.truncate(10)
  else:
    os.remove(state_dir / "_METADATA")
  intact = logits(workdir)  # load_model falls back to step 3
  evaluation = run(command(workdir, "--attacks=clean", "--eps_sweep=", "--large_eps=0.1",
                           "--sweep_attack=fgsm", module="act_jax.evaluate"))
  assert evaluation.returncode == 0, evaluation.stderr[-3000:]
  assert "warning: checkpoint step 6" in evaluation.stderr and "left in place" in evaluation.stderr
  assert "Traceback" not in evaluation.stderr
  [written] = glob.glob(str(workdir / "robustness" / "*.json"))
  assert strict_json(written)["checkpoint_step"] == 3
  assert np.isfinite(intact).all()
  resumed = train(workdir, "--config.train.max_steps=8", "--config.train.checkpoint_every_steps=3",
                  "--config.train.max_checkpoints_to_keep=5")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "warning: checkpoint step 6" in resumed.stderr and "moved aside" in resumed.stderr
  assert "Resuming from step 3" in resumed.stdout
  assert os.path.isdir(workdir / "unrestorable_checkpoints" / "6")
  assert checkpoint_steps(workdir) == [3, 6, 8]  # step 6 saved again, from the resumed run


def test_a_missing_dataset_fails_in_seconds_naming_the_path_and_the_fix(tmp_path):
  workdir = tmp_path / "never_created"
  start = time.time()
  result = train(workdir, "--config.dataset.fashion_mnist_dir=/nonexistent/fashion-mnist")
  assert time.time() - start < 10
  assert_one_line_error(result, "/nonexistent/fashion-mnist",
                        "apt-get install dataset-fashion-mnist")
  assert not workdir.exists()


@pytest.mark.parametrize("flags,fragments", [
    (["--config.train.epochz=3"], ["--config.train.epochz: no such config field",
                                   "did you mean 'epochs'"]),
    (["--config=configs/no_such_recipe.py"], ["--config=configs/no_such_recipe.py: no such"]),
    (["--config.train.epochs=three"], ["--config.train.epochs=three"]),
])
def test_flag_mistakes_get_one_line(tmp_path, flags, fragments):
  assert_one_line_error(run(command(tmp_path / "w", *flags)), *fragments)


def test_a_workdir_that_is_a_file_or_cannot_be_written_gets_one_line(tmp_path):
  a_file = tmp_path / "a_file"
  a_file.write_text("not a directory")
  assert_one_line_error(train(a_file), "is a file, not a directory")
  assert_one_line_error(train("/proc/act_jax_workdir"), "cannot be")


@pytest.mark.slow
@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_and_exits_promptly(tmp_path, signal_number):
  """The process exits 0 within 5 s of committing its preemption checkpoint, and resumes."""
  workdir = tmp_path / "signalled"
  process = subprocess.Popen(command(workdir, *TINY, "--config.train.max_steps=5000",
                                     "--config.train.checkpoint_every_steps=25"),
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=dict(os.environ, PYTHONPATH=REPO))
  try:
    deadline = time.time() + 600
    while not checkpoint_steps(workdir):
      assert time.time() < deadline and process.poll() is None, "no checkpoint appeared"
      time.sleep(0.2)
    process.send_signal(signal_number)
    output, _ = process.communicate(timeout=120)
    exited = time.time()
  finally:
    process.kill()
  assert process.returncode == 0, output[-3000:]
  newest = max(checkpoint_steps(workdir))
  committed = os.path.getmtime(workdir / "checkpoints" / str(newest) / "commit_success.txt")
  assert exited - committed < PROMPT_EXIT_S, exited - committed
  assert f"Stopped at step {newest}" in output
  assert strict_json(workdir / "results.json")["train_log"][-1]["step"] == newest


@pytest.mark.slow
def test_kill_9_keeps_the_log_up_to_the_checkpoint_it_resumes_from(tmp_path):
  workdir = tmp_path / "killed"
  process = subprocess.Popen(command(workdir, *TINY, "--config.train.max_steps=5000",
                                     "--config.train.checkpoint_every_steps=10"),
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=dict(os.environ, PYTHONPATH=REPO))
  try:
    deadline = time.time() + 600
    while not [s for s in checkpoint_steps(workdir) if s >= 20]:
      assert time.time() < deadline and process.poll() is None, "no checkpoint appeared"
      time.sleep(0.2)
  finally:
    process.kill()  # SIGKILL: no handler runs
    process.wait()
  resume_from = max(checkpoint_steps(workdir))
  logged = [entry["step"] for entry in strict_json(workdir / "results.json")["train_log"]]
  assert logged[-1] >= resume_from - 10 and logged == list(range(1, logged[-1] + 1))
  resumed = train(workdir, f"--config.train.max_steps={resume_from + 2}",
                  "--config.train.checkpoint_every_steps=10")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  steps = [entry["step"] for entry in strict_json(workdir / "results.json")["train_log"]]
  assert steps == list(range(1, resume_from + 3))
