"""The lines `python -m act_jax.main --compare_to=STUDY` prints beside its final table (the
README's Quickstart uses the committed study)."""

import json
import os

from act_jax.study import report, runner
from configs import fashion_mnist

from helpers import REPO

STUDY = os.path.join(REPO, "docs", "study", "fashion_mnist", "study.json")


def test_the_committed_study_matches_the_default_recipe():
  lines = report.comparison_lines(STUDY, fashion_mnist.get_config())
  with open(STUDY) as f:
    summary = json.load(f)["summary"]
  assert lines[0].startswith("Same recipe, 3 seeds each")
  assert len(lines) == 1 + len(summary)
  act_robust = next(e for e in summary if e["title"] == "ACT (robust)")
  assert any(line.strip().startswith("ACT (robust)")
             and f"clean {100 * act_robust['clean'][0]:.2f}" in line for line in lines)


def test_another_recipe_or_no_study_is_said_in_one_line(tmp_path):
  config = fashion_mnist.get_config()
  config.optim.learning_rate = 0.2
  assert report.comparison_lines(STUDY, config) == [
      f"(The study in {STUDY} used a different recipe: optim.learning_rate (0.05 -> 0.2); "
      "rerun it to compare.)"]
  missing = str(tmp_path / "study.json")
  assert report.comparison_lines(missing, fashion_mnist.get_config()) == [
      f"(No study at {missing} to compare with.)"]


def budget_study(path, seeds_by_title: dict[str, list[int]]) -> str:
  """A study.json of the default recipe at a 10-epoch budget (as `--epochs=10` writes it)."""
  entries = [{"epochs": 10, "method": "act", "model": "robust", "title": title, "seeds": seeds,
              "clean": [0.7852, 0.01 if len(seeds) > 1 else 0.0], "pgd20": [0.65, 0.0],
              "autoattack": [0.6, 0.0], "worst_case": [0.6, 0.0], "cascade": "autoattack"}
             for title, seeds in seeds_by_title.items()]
  path.write_text(json.dumps({"meta": {"config": fashion_mnist.get_config().to_dict(),
                                       "epochs": [10], "seeds": [0, 1, 2]},
                              "summary": entries}))
  return str(path)


def study_run_config(epochs: int = 10):
  """The config the study gave one of its runs: the budget scales the schedule's cut, and the
  learning curve, the data's location and the evaluation's batch size change no number."""
  config = runner.run_config(fashion_mnist.get_config(), runner.RunKey("act", epochs, 1),
                             steps_per_epoch=468, curve_examples=2000)
  config.dataset.fashion_mnist_dir = "/elsewhere"
  config.eval.batch_size = 256
  return config


def test_a_run_of_a_studied_budget_is_the_same_recipe_and_one_seed_has_no_spread(tmp_path):
  study = budget_study(tmp_path / "study.json", {"ACT (robust)": [0]})
  assert report.comparison_lines(study, study_run_config()) == [
      f"Same recipe, 1 seed ({study}; %):",
      "  ACT (robust)       clean 78.52, PGD-20 65.00, AutoAttack 60.00"]


def test_seeds_are_counted_where_methods_ran_different_numbers_of_them(tmp_path):
  study = budget_study(tmp_path / "study.json", {"ACT (robust)": [0, 1, 2], "PGD-AT": [0]})
  lines = report.comparison_lines(study, study_run_config())
  assert lines[0] == f"Same recipe ({study}; mean ± std over n seeds, %):"
  assert lines[1].startswith("  ACT (robust)       n=3: clean 78.52 ± 1.00, PGD-20 65.00 ± 0.00")
  assert lines[2] == "  PGD-AT             n=1: clean 78.52, PGD-20 65.00, AutoAttack 60.00"


def test_another_budget_or_an_unscaled_schedule_is_said_as_what_it_is(tmp_path):
  study = budget_study(tmp_path / "study.json", {"ACT (robust)": [0]})
  assert report.comparison_lines(study, study_run_config(epochs=30)) == [
      f"(The study in {study} has no runs of 30 epochs, only of 10; nothing to compare with.)"]
  unscaled = study_run_config()
  unscaled.optim.lr_decay_epochs = (2.25,)  # the 3-epoch cut, left in a 10-epoch run
  assert report.comparison_lines(study, unscaled) == [
      f"(The study in {study} used a different recipe: optim.lr_decay_epochs ([0.75] -> "
      "[0.225]); rerun it to compare.)"]
