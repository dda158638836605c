"""A write that fails (a full disk, a quota, a read-only mount) stops the run in one line.

Every file a run writes goes through a temporary name and a rename, or is a checkpoint that
orbax commits only once whole, so a failed write leaves the previous `results.json` and the
newest committed checkpoint as they were: the line names what failed, and rerunning the same
command once space is freed resumes from that checkpoint.
"""

import contextlib
from collections.abc import Iterator

from act_jax.errors import UserError


class WriteFailed(UserError):
  """A file of the run could not be written; the message names it and the reason."""
  exit_code = 4


def _reason(error: BaseException) -> str:
  for cause in (error, error.__cause__, error.__context__):
    if isinstance(cause, OSError) and cause.strerror:
      return cause.strerror
  return " ".join(f"{type(error).__name__}: {error}".split())[:200]


@contextlib.contextmanager
def reported(what: str, path: object, *, any_error: bool = False) -> Iterator[None]:
  """Turns an `OSError` in the block (with `any_error`, any exception: orbax and tensorstore
  report a failed write in several types) into `WriteFailed` naming `what` and `path`."""
  try:
    yield
  except UserError:
    raise
  except Exception as error:  # narrowed to OSError below unless any_error
    if not (any_error or isinstance(error, OSError)):
      raise
    raise WriteFailed(f"could not write {what} ({path}): {_reason(error)}") from None
