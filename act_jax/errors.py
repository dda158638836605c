"""Expected failures: a user's mistake or a run's condition, reported in one line, not a trace.

Every error a user can cause or meet in normal use (a bad flag or config value, a missing
dataset, a workdir that cannot take the run, a diverged run) is a `UserError`. The command
lines print it as `error: <message>` and exit non-zero; anything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
  """Raised for expected failures; `exit_code` is what the command line exits with."""
  exit_code = 2
