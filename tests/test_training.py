"""End to end: the training loop, resumption after interruption, results and `load_model`."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

import act_jax
from act_jax import methods, train
from act_jax.data import pipeline

from helpers import HAS_REAL_FASHION_MNIST, NEEDS_REAL_FASHION_MNIST, REPO


def final_logits(workdir, images):
  return {which: np.asarray(act_jax.load_model(workdir, which)(images))
          for which in ("natural", "robust")}


def test_resume_after_interruption_equals_uninterrupted_run(tiny_config, tmp_path,
                                                           monkeypatch):
  tiny_config.train.eval_every_steps = 4  # the preemption comes at an evaluation step
  uninterrupted = train.train_and_evaluate(tiny_config, str(tmp_path / "a"))
  interrupted_dir = str(tmp_path / "b")
  # A preemption notice at step 4, as SIGTERM raises it. Step 4 is not a checkpoint step
  # (every 3): the preemption checkpoint alone carries the run.
  with monkeypatch.context() as patch:
    patch.setattr(train.Preemption, "requested", lambda self, step: step >= 4)
    partial = train.train_and_evaluate(tiny_config, interrupted_dir)
  assert "final" not in partial and partial["train_log"][-1]["step"] == 4
  assert [record["step"] for record in partial["provenance"]] == [0]
  # Resumed from a results.json written before the reproducibility record existed.
  results_path = os.path.join(interrupted_dir, "results.json")
  with open(results_path) as f:
    written_before_the_record = {k: v for k, v in json.load(f).items() if k != "provenance"}
  with open(results_path, "w") as f:
    json.dump(written_before_the_record, f)
  resumed = train.train_and_evaluate(tiny_config, interrupted_dir)
  assert [record["step"] for record in resumed["provenance"]] == [4]

  assert resumed["final"] == uninterrupted["final"]
  strip = lambda log: [{k: v for k, v in e.items() if k != "images_per_second"} for e in log]
  assert strip(resumed["train_log"]) == strip(uninterrupted["train_log"])
  assert [e["step"] for e in resumed["train_log"]] == [2, 4, 6, 8]
  # The evaluation due at the step the run stopped at is made when it resumes, not lost.
  periodic = lambda results: [(e["step"], e["accuracy"]) for e in results["evaluations"]
                              if e["kind"] == "periodic"]
  assert periodic(partial) == [] and periodic(uninterrupted)[0][0] == 4
  assert periodic(resumed) == periodic(uninterrupted)
  images = np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype(np.float32)
  for which, logits in final_logits(str(tmp_path / "a"), images).items():
    np.testing.assert_array_equal(logits, final_logits(interrupted_dir, images)[which])


def test_every_moment_a_multi_process_preemption_can_be_agreed_on_stops_the_run(
    tiny_config, tmp_path, monkeypatch):
  """JAX's preemption sync, as it agrees across processes: when the notice comes, it takes the
  last step each process reported (by any caller) and stops at the next one, which only the
  loop's own query can act on. Recorded over a run with checkpoints every 3 steps, at every
  moment the notice could arrive, a later query of the loop must report exactly that next step.
  orbax's manager would also report its checkpoints' (earlier) steps, some from a background
  thread, and a preempted run could then never stop."""
  from jax.experimental import multihost_utils
  reported, in_loop = [], [False]

  def sync_point(step):
    reported.append((step, in_loop[0]))
    return False

  original = train.Preemption.requested

  def requested(self, step):
    in_loop[0] = True
    try:
      return original(self, step)
    finally:
      in_loop[0] = False

  monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", sync_point)
  monkeypatch.setattr(train.Preemption, "requested", requested)
  train.train_and_evaluate(tiny_config, str(tmp_path / "run"))
  assert [step for step, by_loop in reported if by_loop] == list(range(1, 9))
  missed = [k for k, (step, _) in enumerate(reported)
            if step < 8 and (step + 1, True) not in reported[k + 1:]]
  assert missed == [], f"a notice after these reports would never stop the run: {reported}"


def test_results_json_and_load_model(tiny_config, tmp_path):
  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(tiny_config, workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    on_disk = json.load(f)
  assert on_disk["final"] == results["final"]
  final = results["final"]
  assert final["num_examples"] == 32 and final["step"] == 8
  for name in ("natural", "robust"):
    accuracy = final["accuracy"][name]
    assert set(accuracy) == {"clean", "pgd2"}  # the config's eval PGD has 2 steps
    assert 0.0 <= accuracy["pgd2"] <= accuracy["clean"] <= 1.0
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  # What the run was computed with: a run repeats digit for digit only on the same code,
  # packages, machine kind and device count.
  [record] = on_disk["provenance"]
  assert record["step"] == 0 and record["device_count"] == len(jax.devices())
  assert record["process_count"] == 1 and record["backend"] == jax.default_backend()
  assert record["device_kind"] == jax.devices()[0].device_kind
  assert (record["cpu_model"] is not None) == (record["backend"] == "cpu")
  assert record["packages"]["jax"] == jax.__version__ and all(record["packages"].values())
  assert record["xla_flags"] == os.environ.get("XLA_FLAGS")
  assert record["command"].startswith("python ")
  if os.path.isdir(os.path.join(REPO, ".git")):  # run from a clone
    assert len(record["git_commit"]) == 40 and isinstance(record["git_dirty"], bool)
  # docs/configs.md documents every key a run writes.
  with open(os.path.join(REPO, "docs", "configs.md")) as f:
    documented = f.read()
  keys = (set(on_disk) | set(final) | set(on_disk["provenance"][0])
          | {"config_changes", "stopped", "images_per_second", "learning_rate"})
  assert [key for key in sorted(keys) if f"`{key}`" not in documented] == []

  # load_model's clean accuracy on the test split reproduces the run's own evaluation.
  batches = list(pipeline.eval_data(tiny_config, batch_size=32).batches())
  checkpoints = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  for which in ("natural", "robust"):
    model_fn = act_jax.load_model(workdir, which)
    correct = sum(float(np.sum((np.argmax(model_fn(b["image"]), -1) == b["label"]) * b["mask"]))
                  for b in batches)
    assert correct / 32 == pytest.approx(final["accuracy"][which]["clean"])
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == checkpoints  # read-only
  with pytest.raises(ValueError, match="this act run has natural, robust"):
    act_jax.load_model(workdir, "teacher")
  np.testing.assert_array_equal(act_jax.load_model(workdir)(batches[0]["image"]),
                                act_jax.load_model(workdir, "robust")(batches[0]["image"]))


def test_the_progress_bar_counts_steps_between_logged_ones(tiny_config, tmp_path, capsys,
                                                           monkeypatch):
  """A run shorter than `train.log_every_steps` checks its metrics only at its last step; its bar
  still shows each step as the devices finish it, not 0/8 until the end."""
  from act_jax import reporting
  monkeypatch.setattr(reporting, "PROGRESS_REFRESH_S", 0.0)  # draw every change
  tiny_config.train.log_every_steps = 50
  tiny_config.train.checkpoint_every_steps = 50
  results = train.train_and_evaluate(tiny_config, str(tmp_path / "run"))
  assert [entry["step"] for entry in results["train_log"]] == [8]  # one check, at the end
  counts = {int(count) for count in re.findall(r"(\d+)/8 \[", capsys.readouterr().out)}
  assert counts & set(range(1, 8)), counts


def test_cli_rejects_bad_config_with_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "act_jax.main", "--config=configs/fashion_mnist.py",
       f"--workdir={tmp_path}", "--config.act.temperature=-1"],
      capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "error: config.act.temperature = -1.0: must be > 0")


# Steps of batch 128 each method trains for, and the clean accuracy each model must pass (10%
# is chance). ACT starts slowly: 90% of each model's loss is agreement with the other model,
# and two untrained models already agree; its CE weight of 0.1 has to get them going.
LEARNING_STEPS = {"natural": 150, "pgd_at": 150, "trades": 150, "act": 600}
MIN_CLEAN_ACCURACY = 0.45


@pytest.mark.slow
@pytest.mark.skipif(not HAS_REAL_FASHION_MNIST, reason=NEEDS_REAL_FASHION_MNIST)
@pytest.mark.parametrize("method", methods.METHOD_NAMES)
def test_a_short_real_fashion_mnist_run_of_each_method_learns(method, tmp_path):
  """A few hundred steps on the real data put every model well above chance (10%), and the
  models trained against an adversary resist PGD-20, where a naturally trained one does not.

  Measured here (clean / PGD-20, %): natural 87.4 / 5.6; PGD-AT 77.0 / 60.4; TRADES
  76.4 / 57.8; ACT natural 64.8 / 21.0, robust 51.4 / 47.4.
  """
  from configs import fashion_mnist
  config = fashion_mnist.get_config()
  config.method = method
  config.model.base_width = 8
  config.attack.num_steps = 3
  config.attack.step_size = 0.04
  config.train.max_steps = LEARNING_STEPS[method]
  config.train.log_every_steps = 50
  config.optim.schedule = "cosine"
  config.eval.num_examples = 500
  accuracy = train.train_and_evaluate(config, str(tmp_path / method))["final"]["accuracy"]
  print(method, accuracy)
  assert set(accuracy) == set(methods.get(method).model_names)
  for model, values in accuracy.items():
    assert values["clean"] > MIN_CLEAN_ACCURACY, (model, values)
  if method != "natural":
    assert accuracy["robust"]["pgd20"] > 0.3, accuracy
  else:
    assert accuracy["natural"]["pgd20"] < 0.3, accuracy
