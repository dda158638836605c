"""Faults that shared clusters and users produce, with real processes, files and signals.

Two runs on one workdir, a full disk, damaged data files, and results that must never be
overwritten or mislabelled (docs/fault_tolerance.md lists each guarantee with its test here).
The lost host of a multi-process run is in test_multi_process.py.
"""

import glob
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
from test_fault_tolerance import (
  TINY,
  assert_one_line_error,
  checkpoint_steps,
  command,
  logits,
  run,
  strict_json,
  train,
  workdir_digest,
)

from helpers import (
  HAS_REAL_FASHION_MNIST,
  NEEDS_REAL_FASHION_MNIST,
  REAL_FASHION_MNIST_DIR,
  REPO,
)

pytestmark = pytest.mark.skipif(not HAS_REAL_FASHION_MNIST, reason=NEEDS_REAL_FASHION_MNIST)

LOCK = "run.lock"


def start(workdir, *flags) -> subprocess.Popen:
  return subprocess.Popen(command(workdir, *TINY, *flags), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=REPO))


def wait_for(condition, process, what, timeout=600):
  deadline = time.time() + timeout
  while not condition():
    assert time.time() < deadline and process.poll() is None, f"{what} did not happen"
    time.sleep(0.1)


def process_start(pid) -> str:
  with open(f"/proc/{pid}/stat") as f:
    return f.read().rsplit(")", 1)[1].split()[19]


def write_lock(workdir, **holder):
  with open(os.path.join(workdir, LOCK), "w") as f:
    json.dump({"started": "2026-01-01T00:00:00+00:00", **holder}, f)


def comparable(workdir) -> dict:
  """What an identical run reproduces bit for bit: both models' outputs from the newest
  checkpoint, the log and the final evaluation (orbax names its data files at random, and its
  metadata and TensorBoard events hold wall-clock times)."""
  results = strict_json(os.path.join(workdir, "results.json"))
  return {"logits": [logits(workdir, which).tolist() for which in ("natural", "robust")],
          "train_log": [{k: v for k, v in entry.items()
                                           if k != "images_per_second"}
                                          for entry in results["train_log"]],
          "final": results["final"]["accuracy"], "checkpoints": checkpoint_steps(workdir)}


@pytest.mark.slow
def test_a_second_run_on_a_busy_workdir_refuses_and_the_first_finishes_unharmed(tmp_path):
  flags = ("--config.train.max_steps=300", "--config.train.checkpoint_every_steps=50")
  undisturbed = train(tmp_path / "undisturbed", *flags)
  assert undisturbed.returncode == 0, undisturbed.stderr[-3000:]
  workdir = tmp_path / "shared"
  first = start(workdir, *flags)
  try:
    wait_for(lambda: checkpoint_steps(workdir), first, "a first checkpoint")
    second = train(workdir, *flags)
    assert_one_line_error(second, "is in use by another run", f"PID {first.pid} on "
                          f"{socket.gethostname()}", "nothing was changed")
    # A reader needs no lock and sees a committed checkpoint while the run trains.
    reader = run([sys.executable, "-c",
                  "import act_jax, numpy as np; "
                  f"m = act_jax.load_model({str(workdir)!r}); "
                  "print(np.isfinite(np.asarray(m(np.zeros((2, 28, 28, 1), np.float32)))).all())"])
    assert reader.returncode == 0 and reader.stdout.strip().endswith("True"), reader.stderr[-3000:]
    _, stderr = first.communicate(timeout=600)
  finally:
    first.kill()
  assert first.returncode == 0, stderr[-3000:]
  assert not os.path.exists(workdir / LOCK)
  assert comparable(workdir) == comparable(tmp_path / "undisturbed")


@pytest.mark.slow
def test_a_lock_of_a_live_run_refuses_and_a_stale_one_is_taken_over(tmp_path):
  workdir = tmp_path / "run"
  assert train(workdir, "--config.train.max_steps=2").returncode == 0
  holder = subprocess.Popen(["sleep", "600"])
  try:
    write_lock(workdir, host=socket.gethostname(), pid=holder.pid,
               process_start=process_start(holder.pid))
    before = workdir_digest(workdir)
    refused = train(workdir, "--config.train.max_steps=4")
    assert_one_line_error(refused, f"PID {holder.pid}", "wait for it to finish")
    assert workdir_digest(workdir) == before
  finally:
    holder.kill()
    holder.wait()
  taken_over = train(workdir, "--config.train.max_steps=4")  # the holder is gone
  assert taken_over.returncode == 0, taken_over.stderr[-3000:]
  assert f"took over the lock of {workdir} from a run that is gone (PID {holder.pid}" in (
      taken_over.stderr)
  assert "Resuming from step 2" in taken_over.stdout and not os.path.exists(workdir / LOCK)
  # A holder on another host cannot be checked from here: the line says how to break the lock.
  write_lock(workdir, host="another-host.example", pid=1, process_start=None)
  assert_one_line_error(train(workdir, "--config.train.max_steps=6"), "another-host.example",
                        f"delete {workdir / LOCK} and run again")


def _fill(directory) -> None:
  """Fills the file system of `directory` to the last byte."""
  with open(os.path.join(directory, "filler"), "wb") as f:
    block = b"\0" * (1 << 20)
    try:
      while True:
        f.write(block)
        f.flush()
    except OSError:
      pass
  for size in (1 << 16, 1 << 12, 1):
    try:
      with open(os.path.join(directory, f"filler_{size}"), "wb") as f:
        while True:
          f.write(b"\0" * size)
          f.flush()
    except OSError:
      pass


@pytest.fixture
def small_disk(tmp_path):
  """A 32 MiB tmpfs (mounting needs root), unmounted afterwards."""
  mount = tmp_path / "small_disk"
  mount.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)],
                           capture_output=True, text=True)
  if mounted.returncode != 0:
    pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
  yield mount
  subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_stops_the_run_in_one_line_and_the_rerun_resumes(small_disk):
  workdir = small_disk / "run"
  process = start(workdir, "--config.train.max_steps=100000",
                  "--config.train.checkpoint_every_steps=10")
  try:
    wait_for(lambda: len(checkpoint_steps(workdir)) >= 2, process, "two checkpoints")
    _fill(small_disk)
    _, stderr = process.communicate(timeout=600)
  finally:
    process.kill()
  newest = max(checkpoint_steps(workdir))
  line = assert_one_line_error(subprocess.CompletedProcess([], process.returncode, "", stderr),
                               "could not write", "No space left on device",
                               f"newest committed checkpoint (step {newest})", exit_code=4)
  assert "free space, then run the same command again" in line
  logged = [entry["step"] for entry in strict_json(workdir / "results.json")["train_log"]]
  assert logged == list(range(1, logged[-1] + 1)) and logged[-1] >= newest
  for filler in glob.glob(str(small_disk / "filler*")):
    os.remove(filler)
  resumed = train(workdir, f"--config.train.max_steps={newest + 3}",
                  "--config.train.checkpoint_every_steps=10")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Resuming from step {newest}" in resumed.stdout
  logged = [entry["step"] for entry in strict_json(workdir / "results.json")["train_log"]]
  assert logged == list(range(1, newest + 4))
  assert not glob.glob(str(workdir / "checkpoints" / "*tmp*"))  # the failed save is cleaned up


def _truncate_gzip(source, target, keep=5000):
  with open(source, "rb") as f:
    data = f.read()
  with open(target, "wb") as f:
    f.write(data[:keep])


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "wrong_file"])
def test_a_damaged_idx_file_gets_one_line_and_no_workdir(tmp_path, damage):
  data = tmp_path / "fashion_mnist"
  shutil.copytree(REAL_FASHION_MNIST_DIR, data)
  damaged = data / "t10k-labels-idx1-ubyte.gz"
  if damage == "truncated":
    _truncate_gzip(os.path.join(REAL_FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz"), damaged)
  else:  # an image file under a label file's name
    shutil.copy(data / "t10k-images-idx3-ubyte.gz", damaged)
  workdir = tmp_path / "run"
  result = train(workdir, f"--config.dataset.fashion_mnist_dir={data}")
  assert_one_line_error(result, f"{damaged} is damaged", "apt-get install --reinstall")
  assert not os.path.exists(workdir)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "stale"])
def test_a_damaged_array_cache_gets_one_line_and_no_workdir(tmp_path, damage):
  cache_dir = tmp_path / "tfds" / "act_jax_arrays"
  cache_dir.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for split, count in (("train", 64), ("test", 32)):
    np.savez(cache_dir / f"cifar10_{split}.npz",
             image=rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8),
             label=rng.integers(0, 10, count).astype(np.int32))
  cache = cache_dir / "cifar10_train.npz"
  if damage == "truncated":
    with open(cache, "r+b") as f:
      f.truncate(os.path.getsize(cache) // 2)
  else:  # from an older layout: channel-less images
    np.savez(cache, image=np.zeros((64, 32, 32), np.uint8), label=np.zeros(64, np.int32))
  workdir = tmp_path / "run"
  result = run(command(workdir, "--config=configs/cifar10.py",
                       f"--config.dataset.data_dir={tmp_path / 'tfds'}"))
  assert_one_line_error(result, f"{cache} is damaged or stale", "delete it, then rebuild it",
                        "python -m act_jax.prepare_data --dataset=cifar10")
  assert not os.path.exists(workdir)


@pytest.mark.slow
def test_evaluating_an_empty_split_is_refused_and_earlier_evaluations_are_kept(tmp_path):
  workdir = tmp_path / "run"
  assert train(workdir, "--config.train.max_steps=2").returncode == 0
  quick = ("--attacks=clean", "--eps_sweep=", "--large_eps=0.1", "--sweep_attack=fgsm",
           "--num_examples=32", "--batch_size=32")
  first = run(command(workdir, *quick, module="act_jax.evaluate"))
  assert first.returncode == 0, first.stderr[-3000:]
  [earlier] = glob.glob(str(workdir / "robustness" / "*.json"))
  with open(earlier, "rb") as f:
    earlier_bytes = f.read()
  empty = run(command(workdir, *quick, "--split=validation", module="act_jax.evaluate"))
  assert_one_line_error(empty, "--split=validation: no examples to evaluate",
                        "dataset.validation_examples = 0", "nothing was written")
  other = run(command(workdir, *quick, "--eps=0.05", module="act_jax.evaluate"))
  repeat = run(command(workdir, *quick, module="act_jax.evaluate"))
  assert other.returncode == 0 and repeat.returncode == 0, (other.stderr + repeat.stderr)[-3000:]
  written = sorted(glob.glob(str(workdir / "robustness" / "*.json")))
  assert len(written) == 3 and f"{earlier[:-5]}_2.json" in written
  with open(earlier, "rb") as f:
    assert f.read() == earlier_bytes
  assert_one_line_error(run(command(workdir, *quick, f"--output={earlier}",
                                    module="act_jax.evaluate")), "exists")
  assert_one_line_error(run(command(workdir, *quick, "--eps=8", module="act_jax.evaluate")),
                        "--eps=8.0: must be in [0, 1]")


STUDY = ["--config=configs/fashion_mnist.py", "--methods=natural", "--seeds=0",
         "--config.model.base_width=4", "--config.eval.num_steps=20", "--config.eval.batch_size=64",
         "--config.train.batch_size=32", "--config.train.max_steps=4",
         "--config.eval.num_examples=64", "--autoattack_examples=32", "--apgd_steps=2",
         "--fab_steps=2", "--square_queries=20", "--curve_examples=0"]


def study(workdir, *flags) -> list[str]:
  return [sys.executable, "-m", "act_jax.study", f"--workdir={workdir}",
          f"--output_dir={workdir}", *STUDY, *flags]


@pytest.mark.slow
def test_a_study_refuses_finished_runs_of_another_recipe(tmp_path):
  """Another training recipe is refused (other evaluation settings are not: the study evaluates
  the trained runs again, tests/test_study.py)."""
  workdir = tmp_path / "study"
  finished = run(study(workdir))
  assert finished.returncode == 0, finished.stderr[-3000:]
  before = workdir_digest(workdir)
  for flag, named in (("--config.eval.eps=0.2", "eval.eps (0.1 -> 0.2)"),
                      ("--config.attack.eps=0.2", "attack.eps (0.1 -> 0.2)")):
    assert_one_line_error(run(study(workdir, flag)), "holds a run of another recipe", named,
                          "nothing was run")
    assert workdir_digest(workdir) == before


@pytest.mark.slow
@pytest.mark.parametrize("phase,signal_number", [
    ("the evaluation of", signal.SIGINT),
    pytest.param("the final evaluation", signal.SIGTERM, marks=pytest.mark.full),
    pytest.param("the final evaluation", signal.SIGINT, marks=pytest.mark.full),
    pytest.param("the evaluation of", signal.SIGTERM, marks=pytest.mark.full)])
def test_a_signal_stops_a_study_in_its_evaluations_and_it_exits_non_zero(tmp_path, phase,
                                                                         signal_number):
  """The final evaluation (inside training) and the study's own AutoAttack evaluation stop at
  once, write nothing, and exit 130 with a line saying how to resume; the rerun finishes."""
  workdir = tmp_path / "study"
  slower = ("--config.eval.num_examples=2000" if phase == "the final evaluation"
            else "--autoattack_examples=2000", "--apgd_steps=50")
  process = subprocess.Popen(study(workdir, *slower), cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=REPO))
  run_dir = workdir / "natural" / "epochs3" / "seed0"  # the recipe's 3 epochs, cut to 4 steps
  in_phase = ((lambda: os.path.exists(run_dir / "results.json") and
               strict_json(run_dir / "results.json")["train_log"][-1:] and
               strict_json(run_dir / "results.json")["train_log"][-1]["step"] == 4)
              if phase == "the final evaluation" else
              (lambda: os.path.exists(run_dir / "results.json") and
               "final" in strict_json(run_dir / "results.json")))
  try:
    wait_for(in_phase, process, phase)
    time.sleep(3)
    before = workdir_digest(run_dir)
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=120)
  finally:
    process.kill()
  line = assert_one_line_error(subprocess.CompletedProcess([], process.returncode, "", stderr),
                               f"{signal.Signals(signal_number).name} during {phase}",
                               "run the same command again to resume", exit_code=130)
  assert "Traceback" not in stderr, line
  def kept(digest):  # what the run wrote; its lock is released on the way out
    return {k: v for k, v in digest.items() if "tensorboard" not in k and k != LOCK}
  assert kept(workdir_digest(run_dir)) == kept(before) and LOCK in before
  assert not os.path.exists(run_dir / LOCK) and not os.path.exists(run_dir / "study_run.json")
  # The study's own evaluation settings may change between calls; the slower training-side
  # evaluation may not (it is part of the run's recipe).
  rerun = run(study(workdir, *(slower if phase == "the final evaluation" else ())))
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert os.path.exists(run_dir / "study_run.json")
