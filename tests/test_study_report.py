"""What a study prints, word for word: its table's note and its ETA (no training here; the
study itself runs in tests/test_study.py)."""

from act_jax.study import report, runner
from configs import fashion_mnist


def row(method: str, seed: int, clean: float) -> dict:
  return {"method": method, "model": "robust", "epochs": 3, "seed": seed, "clean": clean,
          "pgd20": 0.6, "autoattack": 0.5, "worst_case": 0.5, "cascade": "autoattack"}


def test_one_seed_shows_its_value_alone_and_a_subset_is_called_one():
  summary = report.summarise([row("pgd_at", 0, 0.8), row("pgd_at", 1, 0.82),
                              row("trades", 0, 0.7852)])
  table = report.markdown_table(summary, eps=0.1, autoattack_examples=256, clean_examples=256,
                                split_examples=10_000)
  lines = table.splitlines()
  assert lines[2] == ("| 3 | PGD-AT | 2 | 81.00 ± 1.41 | 60.00 ± 0.00 | 50.00 ± 0.00 | "
                      "50.00 ± 0.00 |")
  assert lines[3] == "| 3 | TRADES | 1 | 78.52 | 60.00 | 50.00 | 50.00 |"
  assert "Clean and PGD-20 on the first 256 of 10,000 test examples;" in table
  whole = report.markdown_table(summary, eps=0.1, autoattack_examples=256,
                                clean_examples=10_000, split_examples=10_000)
  assert "Clean and PGD-20 on all 10,000 test examples;" in whole
  held_out = report.markdown_table(summary, eps=0.1, autoattack_examples=256,
                                   clean_examples=10_000, split_examples=10_000, split="validation")
  assert "Clean and PGD-20 on all 10,000 validation examples;" in held_out
  assert "test" not in held_out


def test_a_study_on_the_validation_hold_out_sizes_its_split_as_the_hold_out():
  config = fashion_mnist.get_config()
  assert runner.evaluation_split_size(config) == 10_000  # the test split
  config.dataset.validation_examples, config.eval.split = 5_000, "validation"
  assert runner.evaluation_split_size(config) == 5_000


def test_the_eta_counts_only_the_runs_left_with_training_and_evaluation_apart():
  time_left = runner.TimeLeft()
  assert time_left.describe([(8.0, 2)]) == ""  # nothing done yet: no rate
  # A short natural run: 10 s of training for 2 units of work, then 50 s evaluating its model.
  time_left.add(train_seconds=10.0, work=2.0, eval_seconds=50.0, models=1)
  # An ACT run left (work 8, two models): 8 x 5 s + 2 x 50 s, where one rate for both, 60 s
  # per 2 units, said 240 s.
  assert time_left.describe([(8.0, 2)]) == ", ETA 2m20s for 1 run left to train"
  # A trained run whose evaluation is stale costs its evaluation only.
  assert time_left.describe([(8.0, 2), (0.0, 1)]) == (
      ", ETA 3m10s for 1 run left to train and 1 to evaluate")
  assert time_left.describe([(0.0, 1), (0.0, 1)]) == ", ETA 1m40s for 2 runs left to evaluate"
  assert time_left.describe([]) == ""  # finished runs are never in the list
  # A run that was evaluated again, not trained, adds to the evaluation rate only.
  time_left.add(train_seconds=None, work=0.0, eval_seconds=10.0, models=1)
  assert time_left.describe([(0.0, 2)]) == ", ETA 1m00s for 1 run left to evaluate"


def test_the_table_says_which_machine_trained_each_budget():
  cpu, gpu = "AMD EPYC; 2 cores; 2 JAX device(s)", "NVIDIA H200; 16 cores; 1 JAX device(s)"
  rows = [{**row("pgd_at", 0, 0.8), "epochs": 3, "trained_on": [cpu]},
          {**row("pgd_at", 0, 0.8), "epochs": 10, "trained_on": [cpu]},
          {**row("pgd_at", 0, 0.8), "epochs": 30, "trained_on": [gpu]},
          {**row("pgd_at", 1, 0.8), "epochs": 30, "trained_on": [cpu, gpu]}]
  table = report.markdown_table(report.summarise(rows), eps=0.1, autoattack_examples=16,
                                clean_examples=16)
  assert (f"3 and 10 epochs trained on {cpu}. 30 epochs trained on {cpu} and {gpu}."
          in table.splitlines())
  same = report.markdown_table(report.summarise(rows[:2]), eps=0.1, autoattack_examples=16,
                               clean_examples=16)
  assert f"Trained on {cpu}." in same.splitlines()
  unrecorded = report.markdown_table(report.summarise([row("pgd_at", 0, 0.8)]), eps=0.1,
                                     autoattack_examples=16, clean_examples=16)
  assert "Trained on" not in unrecorded
