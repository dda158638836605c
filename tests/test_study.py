"""The study runner on a tiny grid: 2 methods x 2 budgets x 1 seed, interrupted and rerun.

Real subprocesses and a real SIGTERM: the first invocation is stopped during the last run's
training; the second skips the finished runs, resumes the interrupted one from its checkpoint,
and writes the table, the CSV, the JSON and both plots.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, write_fake_fashion_mnist

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 16  # 256 training images in batches of 16
BUDGETS = (2, 4)
INTERRUPTED_RUN = os.path.join("pgd_at", "epochs4", "seed0")
PEAK_LR = 0.05


def study_command(idx_dir, workdir, *extra: str) -> list[str]:
  return [sys.executable, "-m", "act_jax.study", "--config=configs/fashion_mnist.py",
          f"--workdir={workdir}", "--methods=natural,pgd_at", "--seeds=0",
          f"--epochs={','.join(map(str, BUDGETS))}", "--autoattack_examples=16",
          "--apgd_steps=2", "--fab_steps=2", "--square_queries=20", "--curve_examples=32",
          f"--config.dataset.fashion_mnist_dir={idx_dir}", "--config.model.base_width=4",
          "--config.train.batch_size=16", f"--config.optim.learning_rate={PEAK_LR}",
          "--config.train.checkpoint_every_steps=10", "--config.train.log_every_steps=1",
          "--config.attack.num_steps=2", "--config.eval.num_examples=48",
          "--config.eval.batch_size=16", *extra]


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
  partial = json.loads((workdir / "study.json").read_text())
  interrupted = json.loads((workdir / INTERRUPTED_RUN / "results.json").read_text())
  second = subprocess.run(study_command(idx_dir, workdir), cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=900)
  # The 2-epoch runs evaluated again with another cascade: nothing trains, nothing is lost.
  recascade = subprocess.run(study_command(idx_dir, workdir, "--cascade=apgd-ce+apgd-t",
                                           "--epochs=2", f"--output_dir={root / 'recascade'}"),
                             cwd=REPO, env=environment, capture_output=True, text=True,
                             timeout=600)
  report_only = subprocess.run(study_command(idx_dir, workdir, "--report_only", "--seeds=0,1",
                                             f"--output_dir={root / 'report'}"),
                               cwd=REPO, env=environment, capture_output=True, text=True,
                               timeout=300)
  return {"workdir": workdir, "root": root, "first": first_output,
          "first_code": first.returncode, "partial": partial, "interrupted": interrupted,
          "second": second.stdout + second.stderr, "second_code": second.returncode,
          "recascade": recascade, "report_only": report_only}


def expected_cpu_devices() -> int:
  """The study's CPU devices: one per core that divides its batches of 16
  (`parallel.use_one_cpu_device_per_core`), unless the environment chooses a count."""
  chosen = re.search(r"xla_force_host_platform_device_count=(\d+)",
                     os.environ.get("XLA_FLAGS", ""))
  if chosen or os.environ.get("JAX_NUM_CPU_DEVICES"):
    return int(chosen[1] if chosen else os.environ["JAX_NUM_CPU_DEVICES"])
  cores = len(os.sched_getaffinity(0))
  return max(n for n in range(1, cores + 1) if 16 % n == 0)


def results(study, run: str) -> dict:
  return json.loads((study["workdir"] / run / "results.json").read_text())


def test_an_interrupted_study_stops_cleanly_with_a_partial_table(study):
  assert study["first_code"] == 130, study["first"][-3000:]  # a script sees it did not finish
  assert "[run 4/4] pgd_at, 4 epochs, seed 0: training and evaluating" in study["first"]
  assert (f"error: the training of pgd_at, 4 epochs, seed 0 stopped at its newest checkpoint in "
          f"{study['workdir'] / INTERRUPTED_RUN}; run the same command again to resume"
          ) in study["first"]
  meta = study["partial"]["meta"]
  assert not meta["complete"]
  assert meta["missing_runs"] == [{"method": "pgd_at", "epochs": 4, "seed": 0}]
  assert len(study["partial"]["runs"]) == 3


def test_the_rerun_skips_finished_runs_and_resumes_the_interrupted_one(study):
  output = study["second"]
  assert study["second_code"] == 0, output[-3000:]
  for number, run in enumerate(["natural, 2 epochs", "pgd_at, 2 epochs", "natural, 4 epochs"],
                               start=1):
    assert f"[run {number}/4] {run}, seed 0: finished, skipped" in output
  assert "[run 4/4] pgd_at, 4 epochs, seed 0: training and evaluating" in output
  assert "Resuming from step" in output


def test_each_budget_cuts_the_learning_rate_three_quarters_through(study):
  """The recipe cuts at 2.25 of 3 epochs; each budget cuts at the same fraction."""
  for budget in BUDGETS:
    run = results(study, os.path.join("natural", f"epochs{budget}", "seed0"))
    assert run["config"]["optim"]["lr_decay_epochs"] == [0.75 * budget]
    at_peak = [abs(entry["learning_rate"] - PEAK_LR) < 1e-6 for entry in run["train_log"]]
    assert len(at_peak) == budget * STEPS_PER_EPOCH
    assert at_peak == [True] * int(0.75 * len(at_peak)) + [False] * int(0.25 * len(at_peak))


def test_every_run_records_its_learning_curve_every_epoch(study):
  for method in ("natural", "pgd_at"):
    for budget in BUDGETS:
      run = results(study, os.path.join(method, f"epochs{budget}", "seed0"))
      curve = [e for e in run["evaluations"] if e["kind"] == "periodic"]
      assert [e["epoch"] for e in curve] == list(range(1, budget + 1))
      assert [e["step"] for e in curve] == [STEPS_PER_EPOCH * e for e in range(1, budget + 1)]
      assert {e["num_examples"] for e in curve} == {32}
      assert run["final"]["num_examples"] == 48
      assert set(curve[0]["accuracy"]["robust" if method == "pgd_at" else "natural"]) == {
          "clean", "pgd20"}
  # The interrupted run kept its curve up to its checkpoint, and the rerun went on from there.
  interrupted = [e["step"] for e in study["interrupted"]["evaluations"]]
  resumed = results(study, INTERRUPTED_RUN)["evaluations"]
  assert [e["step"] for e in resumed][:len(interrupted)] == interrupted


def test_the_study_writes_its_tables_json_and_plots(study):
  workdir = study["workdir"]
  summary = json.loads((workdir / "study.json").read_text())
  assert summary["meta"]["complete"] and summary["meta"]["epochs"] == list(BUDGETS)
  assert [(r["method"], r["epochs"]) for r in summary["runs"]] == [
      ("natural", 2), ("pgd_at", 2), ("natural", 4), ("pgd_at", 4)]
  for run in summary["runs"]:
    assert run["clean_examples"] == 48 and run["autoattack_examples"] == 16
    assert 0.0 <= run["worst_case"] <= run["autoattack"] <= 1.0
    assert [point["epoch"] for point in run["curve"]] == list(range(1, run["epochs"] + 1))
  assert [(e["epochs"], e["title"]) for e in summary["summary"]] == [
      (2, "natural training"), (2, "PGD-AT"), (4, "natural training"), (4, "PGD-AT")]
  table = (workdir / "study.md").read_text()
  assert "| 4 | PGD-AT | 1 |" in table and "±" not in table.split("\n")[2]  # one seed
  assert "AutoAttack (%), first 16" in table
  record = json.loads((workdir / INTERRUPTED_RUN / "study_run.json").read_text())
  stages = record["evaluation"]["cascade_stages"]["robust"]["autoattack"]
  assert [stage["attack"] for stage in stages] == ["apgd-ce", "apgd-t", "fab-t", "square"]
  assert stages[-1]["accuracy"] == record["evaluation"]["accuracy"]["robust"]["autoattack"]
  assert "Partial" not in table
  assert len((workdir / "study.csv").read_text().strip().splitlines()) == 5
  # What the study and each run were computed with; the interrupted run has a record for each
  # invocation that trained it.
  record = summary["meta"]["provenance"]
  assert record["command"] == summary["meta"]["command"] and record["process_count"] == 1
  if record["backend"] == "cpu":
    assert record["device_count"] == expected_cpu_devices()
  assert summary["meta"]["machine"].endswith(f"; {record['device_count']} JAX device(s)")
  for run in summary["runs"]:
    run_records = json.loads((pathlib.Path(run["workdir"]) / "results.json").read_text())[
        "provenance"]
    assert {r["device_count"] for r in run_records} == {record["device_count"]}
    assert run["trained_on"] == [summary["meta"]["machine"]]
  assert f"Trained on {summary['meta']['machine']}." in table.splitlines()
  resumed_from = [r["step"] for r in results(study, INTERRUPTED_RUN)["provenance"]]
  assert len(resumed_from) == 2 and resumed_from[0] == 0 < resumed_from[1]
  for plot in ("study.png", "curves.png"):
    assert (workdir / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_another_cascade_evaluates_again_without_training_and_keeps_the_earlier(study):
  result = study["recascade"]
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  for number, method in enumerate(("natural", "pgd_at"), start=1):
    assert (f"[run {number}/2] {method}, 2 epochs, seed 0: evaluating again (--cascade "
            "(autoattack -> apgd-ce+apgd-t))") in result.stdout
  assert "Resuming" not in result.stdout + result.stderr
  record = json.loads((study["workdir"] / "pgd_at" / "epochs2" / "seed0" /
                       "study_run.json").read_text())
  assert record["evaluation"]["cascade"] == "apgd-ce+apgd-t"
  assert [e["cascade"] for e in record["earlier_evaluations"]] == ["autoattack"]
  table = (study["root"] / "recascade" / "study.md").read_text()
  assert "APGD-CE + APGD-T (%), first 16" in table


def test_report_only_trains_nothing_and_marks_what_is_missing(study):
  result = study["report_only"]
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert "[run 3/8] natural, 2 epochs, seed 1: not finished, left for later" in result.stdout
  assert not (study["workdir"] / "natural" / "epochs2" / "seed1").exists()
  report = json.loads((study["root"] / "report" / "study.json").read_text())
  assert not report["meta"]["complete"] and len(report["meta"]["missing_runs"]) == 4
  assert len(report["runs"]) == 4
  table = (study["root"] / "report" / "study.md").read_text()
  assert "Partial: 4 runs" in table
  # The 2-epoch runs keep the cascade they were last evaluated with, and say so.
  assert ("[run 1/8] natural, 2 epochs, seed 0: reported with its earlier evaluation "
          "(--cascade (apgd-ce+apgd-t -> autoattack))") in result.stdout
  assert "(APGD-CE + APGD-T) |" in table and "(AutoAttack) |" in table
