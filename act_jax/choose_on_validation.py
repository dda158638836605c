"""`python -m act_jax.choose_on_validation --candidates=DIR,DIR,... [--model=robust]
    [--metric=worst_case]`

Chooses one hyperparameter value among candidate studies, each a study directory (its
study.json) trained with one value and evaluated on the validation hold-out: the candidate whose
`--model` scores highest on `--metric` (mean over its seeds), ties broken by PGD-20, then by
clean accuracy. It prints every candidate, then the winner's directory name alone on the last
line, so that a script can read it. A candidate evaluated on the test split is refused: a value
chosen there would leak the test split into the result it is then measured on.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from absl import app, flags
from etils import epath

from act_jax import command_line, reporting
from act_jax.errors import UserError

METRICS = ("worst_case", "autoattack", "pgd20", "clean")


def candidate_score(study: Mapping[str, Any], *, model: str, metric: str) -> tuple[float, ...]:
  """(metric, PGD-20, clean) of `model` in a one-method study, means over seeds: compared as a
  tuple, so the later ones break ties."""
  split = study["meta"]["config"]["eval"]["split"]
  if split != "validation":
    raise UserError(f"eval.split = {split}: candidates must be evaluated on the validation "
                    "hold-out (--config.eval.split=validation)")
  entries = [entry for entry in study["summary"] if entry["model"] == model]
  if len(entries) != 1:
    found = sorted({entry["model"] for entry in study["summary"]})
    raise UserError(f"--model={model}: a candidate needs exactly one such row; it has "
                    f"{', '.join(found) or 'none'}")
  if not study["meta"]["complete"]:
    raise UserError("a candidate study is partial: finish its runs first")
  entry = entries[0]
  return tuple(entry[key][0] for key in (metric, "pgd20", "clean"))


def choose(studies: Mapping[str, Mapping[str, Any]], *, model: str,
           metric: str) -> tuple[str, dict[str, tuple[float, ...]]]:
  """The winning candidate's name and every candidate's score."""
  scores = {name: candidate_score(study, model=model, metric=metric)
            for name, study in studies.items()}
  return max(scores, key=scores.__getitem__), scores


def table(scores: Mapping[str, Sequence[float]], metric: str, winner: str) -> str:
  lines = [f"| candidate | {metric} (%) | PGD-20 (%) | clean (%) |", "|---|---|---|---|"]
  for name, score in scores.items():
    mark = " (chosen)" if name == winner else ""
    lines.append(f"| {name}{mark} | " + " | ".join(f"{100 * v:.2f}" for v in score) + " |")
  return "\n".join(lines)


FLAGS = flags.FLAGS
flags.DEFINE_list("candidates", None, "Study directories, one per candidate value.",
                  required=True)
flags.DEFINE_string("model", "robust", "The model compared: robust (ACT's, or the only one) or "
                    "natural (ACT's).")
flags.DEFINE_enum("metric", "worst_case", METRICS, "The accuracy that chooses.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  studies = {}
  for directory in FLAGS.candidates:
    path = epath.Path(directory) / "study.json"
    if not path.exists():
      raise UserError(f"{path} not found: run the candidate's study first")
    studies[epath.Path(directory).name] = reporting.read_json(path)
  winner, scores = choose(studies, model=FLAGS.model, metric=FLAGS.metric)
  print(table(scores, FLAGS.metric, winner))
  print(winner, flush=True)


if __name__ == "__main__":
  command_line.run(main)
