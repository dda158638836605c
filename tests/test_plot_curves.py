"""`python -m act_jax.plot_curves`: a run's training log and evaluations as a PNG, drawn from a
results.json written here in the documented format (no training)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from act_jax import plot_curves

from helpers import REPO


def act_results() -> dict:
  """An ACT run's results.json as docs/configs.md#resultsjson describes it: 8 steps, a training
  log every 2 (one diverged window, written as null), periodic evaluations every 4, a final one."""
  train_log = [{"step": step, "learning_rate": 0.1, "images_per_second": 100.0,
                **{f"{model}/{term}": value for model in ("natural", "robust")
                   for term, value in (("loss", 2.0 / step), ("ce", 1.0), ("kl", 0.5),
                                       ("accuracy", 0.1 * step))}}
               for step in (2, 4, 6, 8)]
  train_log[1]["robust/loss"] = None

  def evaluation(step: int, kind: str, num_examples: int) -> dict:
    return {"step": step, "epoch": step / 4, "kind": kind, "split": "test",
            "num_examples": num_examples,
            "accuracy": {model: {"clean": 0.05 * step, "pgd2": 0.02 * step}
                         for model in ("natural", "robust")}}

  evaluations = [evaluation(4, "periodic", 32), evaluation(8, "periodic", 32),
                 evaluation(8, "final", 64)]
  return {"config": {}, "total_steps": 8, "train_log": train_log, "evaluations": evaluations,
          "final": evaluations[-1]}


def test_the_figure_draws_each_model_and_each_evaluated_attack():
  figure = plot_curves.curves_figure(act_results())
  loss, accuracy, evaluated = figure.axes
  for panel in (loss, accuracy):
    assert [line.get_label() for line in panel.get_lines()] == ["natural", "robust"]
  robust_loss = loss.get_lines()[1].get_ydata()
  assert np.isnan(robust_loss[1]) and robust_loss[0] == 1.0  # null is a gap, not a crash
  np.testing.assert_allclose(accuracy.get_lines()[0].get_ydata(), [20, 40, 60, 80])
  periodic = {line.get_label(): line for line in evaluated.get_lines()}
  assert set(periodic) == {"natural, clean", "natural, PGD-2", "robust, clean", "robust, PGD-2"}
  np.testing.assert_allclose(periodic["robust, PGD-2"].get_xydata(), [[4, 8], [8, 16]])
  assert len(evaluated.collections) == 4  # the final evaluation: one star per model and attack
  assert "periodic (lines) on 32 examples, final (stars) on 64" in evaluated.get_title()


def test_a_run_without_log_or_evaluation_is_refused_in_one_line():
  with pytest.raises(plot_curves.UserError, match="nothing to plot"):
    plot_curves.curves_figure({"config": {}, "total_steps": 8, "train_log": [],
                               "evaluations": []})


def run_command(*flags: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "act_jax.plot_curves", *flags], cwd=REPO,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, PYTHONPATH=REPO))


def test_the_command_writes_a_png_into_the_workdir(tmp_path):
  from matplotlib import image
  (tmp_path / "results.json").write_text(json.dumps(act_results()))
  result = run_command(f"--workdir={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == f"wrote {tmp_path / 'training_curves.png'}"
  height, width, _ = image.imread(tmp_path / "training_curves.png").shape
  assert (height, width) == (462, 1650)  # 15 x 4.2 inches at 110 dpi

  missing = run_command(f"--workdir={tmp_path / 'nothing'}")
  assert missing.returncode == 2 and "Traceback" not in missing.stderr
  assert missing.stderr.strip().splitlines()[-1] == (
      f"error: {tmp_path / 'nothing' / 'results.json'} not found: is {tmp_path / 'nothing'} "
      "an act_jax workdir?")
