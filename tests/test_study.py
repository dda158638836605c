"""The study runner on a tiny budget: 2 methods x 2 seeds, interrupted and rerun.

Real subprocesses and a real SIGTERM: the first invocation is stopped during a run's training;
the second skips the finished runs, resumes the interrupted one from its checkpoint, trains the
rest and writes the table, the CSV, the JSON and the plot.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, write_fake_fashion_mnist

INTERRUPTED_RUN = os.path.join("pgd_at", "seed0")


def study_command(idx_dir, workdir) -> list[str]:
  return [sys.executable, "-m", "act_jax.study", "--config=configs/fashion_mnist.py",
          f"--workdir={workdir}", "--methods=natural,pgd_at", "--seeds=0,1",
          "--autoattack_examples=16", "--apgd_steps=2",
          f"--config.dataset.fashion_mnist_dir={idx_dir}", "--config.model.base_width=4",
          "--config.train.batch_size=16", "--config.train.max_steps=150",
          "--config.train.checkpoint_every_steps=10", "--config.train.log_every_steps=10",
          "--config.attack.num_steps=2", "--config.eval.num_examples=32",
          "--config.eval.batch_size=16"]


def wait_for(predicate, timeout_s: float, what: str) -> None:
  deadline = time.time() + timeout_s
  while not predicate():
    if time.time() > deadline:
      raise TimeoutError(f"waited {timeout_s} s for {what}")
    time.sleep(0.2)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  root = tmp_path_factory.mktemp("study")
  idx_dir = write_fake_fashion_mnist(root / "idx", 256, 48)
  workdir = root / "study"
  environment = dict(os.environ, PYTHONPATH=REPO)
  first = subprocess.Popen(study_command(idx_dir, workdir), cwd=REPO, env=environment,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  checkpoints = workdir / INTERRUPTED_RUN / "checkpoints"
  try:
    wait_for(lambda: checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir()),
             600, f"a checkpoint of {INTERRUPTED_RUN}")
    first.send_signal(signal.SIGTERM)
    first_output, _ = first.communicate(timeout=300)
  finally:
    first.kill()
  second = subprocess.run(study_command(idx_dir, workdir), cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=900)
  return {"workdir": workdir, "first": first_output, "first_code": first.returncode,
          "second": second.stdout + second.stderr, "second_code": second.returncode}


def test_an_interrupted_study_stops_cleanly(study):
  assert study["first_code"] == 0, study["first"][-3000:]
  assert "[run 3/4] pgd_at seed 0: training and evaluating" in study["first"]
  assert f"Interrupted in {study['workdir'] / INTERRUPTED_RUN}" in study["first"]
  assert "[run 4/4]" not in study["first"]  # it stopped there, and wrote no tables


def test_the_rerun_skips_finished_runs_and_resumes_the_interrupted_one(study):
  output = study["second"]
  assert study["second_code"] == 0, output[-3000:]
  assert "[run 1/4] natural seed 0: finished, skipped" in output
  assert "[run 2/4] natural seed 1: finished, skipped" in output
  assert "[run 3/4] pgd_at seed 0: training and evaluating" in output
  assert "Resuming from step" in output
  assert "ETA" in output


def test_the_study_writes_its_table_csv_json_and_plot(study):
  workdir = study["workdir"]
  summary = json.loads((workdir / "study.json").read_text())
  assert [(r["method"], r["seed"]) for r in summary["runs"]] == [
      ("natural", 0), ("natural", 1), ("pgd_at", 0), ("pgd_at", 1)]
  for run in summary["runs"]:
    assert run["clean_examples"] == 32 and run["autoattack_examples"] == 16
    assert 0.0 <= run["worst_case"] <= run["autoattack"] <= 1.0
  assert [entry["title"] for entry in summary["summary"]] == ["natural training", "PGD-AT"]
  table = (workdir / "study.md").read_text()
  assert "| PGD-AT | 2 |" in table and "±" in table
  assert len((workdir / "study.csv").read_text().strip().splitlines()) == 5
  assert (workdir / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
