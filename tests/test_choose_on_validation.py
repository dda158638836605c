"""Choosing a hyperparameter among candidate studies on the validation hold-out."""

import pytest

from act_jax import choose_on_validation as choose
from act_jax.errors import UserError


def study(worst_case: float, pgd20: float, *, split: str = "validation",
          complete: bool = True) -> dict:
  rows = [{"model": "robust", "worst_case": [worst_case, 0.0], "autoattack": [worst_case, 0.0],
           "pgd20": [pgd20, 0.0], "clean": [0.85, 0.0]},
          {"model": "natural", "worst_case": [0.9, 0.0], "autoattack": [0.9, 0.0],
           "pgd20": [0.9, 0.0], "clean": [0.9, 0.0]}]
  return {"meta": {"config": {"eval": {"split": split}}, "complete": complete}, "summary": rows}


def test_the_best_robust_worst_case_wins_and_pgd20_breaks_a_tie():
  winner, scores = choose.choose({"alpha0.5": study(0.70, 0.74), "alpha0.7": study(0.72, 0.73),
                                  "alpha0.9": study(0.72, 0.75)}, model="robust",
                                 metric="worst_case")
  assert winner == "alpha0.9"
  assert scores["alpha0.7"] == (0.72, 0.73, 0.85)
  assert "| alpha0.9 (chosen) | 72.00 | 75.00 | 85.00 |" in choose.table(scores, "worst_case",
                                                                         winner)
  natural, _ = choose.choose({"a": study(0.1, 0.1), "b": study(0.2, 0.2)}, model="natural",
                             metric="clean")
  assert natural == "a"  # both natural rows tie on every key: the first candidate stays


def test_a_candidate_scored_on_the_test_split_or_unfinished_is_refused():
  with pytest.raises(UserError, match=r"eval\.split = test"):
    choose.choose({"a": study(0.7, 0.7), "b": study(0.8, 0.8, split="test")}, model="robust",
                  metric="worst_case")
  with pytest.raises(UserError, match="partial"):
    choose.choose({"a": study(0.7, 0.7, complete=False)}, model="robust", metric="worst_case")
  with pytest.raises(UserError, match="--model=teacher"):
    choose.choose({"a": study(0.7, 0.7)}, model="teacher", metric="worst_case")
