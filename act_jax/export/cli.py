"""`python -m act_jax.export`: one model of a trained run as PyTorch files (see `act_jax.export`).

    python -m act_jax.export --workdir=RUN --model=robust --output=DIR

Writes DIR/model.pt2 (a `torch.export` program), DIR/model.safetensors and DIR/model.json, and
prints the step exported and the parity check they passed. Needs the `torch` extra.
"""

import sys

from absl import app, flags

import act_jax.export as export_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "An act_jax training workdir (config.json and checkpoints).",
                    required=True)
flags.DEFINE_string("model", None,
                    "Which of the run's models: natural or robust for ACT, the one model of the "
                    "other methods (default: the robust one where there is one).")
flags.DEFINE_string("output", None, "A new (or empty) directory for model.pt2, "
                    "model.safetensors and model.json; an export never overwrites.",
                    required=True)
flags.DEFINE_integer("step", None, "Export this checkpoint step (default: the newest).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.step is not None and FLAGS.step < 0:
    raise export_lib.ExportError(f"--step={FLAGS.step}: must be >= 0 (a checkpoint's step)")
  card = export_lib.export_run(FLAGS.workdir, FLAGS.output, which=FLAGS.model, step=FLAGS.step)
  if card["run_finished"] is False:
    total = card["total_steps"]
    print(f"warning: the run in {FLAGS.workdir} is unfinished: exporting step {card['step']}"
          + (f" of {total}" if total else "") + "; train on to export the final model",
          file=sys.stderr, flush=True)
  parity = card["parity"]
  worst = max(parity["program_max_abs_difference"], parity["weights_max_abs_difference"])
  print(f"Exported the {card['model']} model ({card['architecture']}) of {card['method']} run "
        f"{card['workdir']} at step {card['step']} to {FLAGS.output}: {export_lib.PROGRAM_FILE}, "
        f"{export_lib.WEIGHTS_FILE}, {export_lib.CARD_FILE}. Input: NCHW float32 "
        f"{'x'.join(map(str, card['input']['shape']))} in [0, 1]; PyTorch logits within "
        f"{worst:.2g} of the flax model's (logits up to {parity['max_abs_logit']:.3g}).",
        flush=True)
