"""The lines `python -m act_jax.main --compare_to=STUDY` prints beside its final table (the
README's Quickstart uses the committed study)."""

import json
import os

from act_jax.study import report
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
      f"(The study in {STUDY} used a different recipe; rerun it to compare.)"]
  missing = str(tmp_path / "study.json")
  assert report.comparison_lines(missing, fashion_mnist.get_config()) == [
      f"(No study at {missing} to compare with.)"]
