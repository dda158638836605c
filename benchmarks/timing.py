"""Wall-clock timing of a synchronised call: the first call apart, then the median of the rest.

Every call passed here must block until its device work is done (`jax.block_until_ready`,
`torch.cuda.synchronize`), or the clock measures only the dispatch of asynchronous work.
"""

import dataclasses
import statistics
import time
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Timing:
  """`first_seconds`: the first call (compilation, autotuning); `step_seconds`: the timed calls."""
  first_seconds: float
  step_seconds: tuple[float, ...]

  @property
  def median_seconds(self) -> float:
    return statistics.median(self.step_seconds)

  @property
  def spread(self) -> float:
    """(max - min) / median of the timed calls: how steady the measurement was."""
    return (max(self.step_seconds) - min(self.step_seconds)) / self.median_seconds


def time_calls(call: Callable[[], object], *, warmup_calls: int, timed_calls: int,
               clock: Callable[[], float] = time.perf_counter) -> Timing:
  """Times `call` once cold, runs `warmup_calls - 1` more untimed, then times `timed_calls`.

  The median of per-call times is robust to a stray slow call (a GC pause, another process)
  that would skew a mean over one long interval. `clock` is read before and after each timed
  call.
  """
  if warmup_calls < 1 or timed_calls < 1:
    raise ValueError(f"warmup_calls ({warmup_calls}) and timed_calls ({timed_calls}) must be >= 1")
  start = clock()
  call()
  first = clock() - start
  for _ in range(warmup_calls - 1):
    call()
  times = []
  for _ in range(timed_calls):
    start = clock()
    call()
    times.append(clock() - start)
  return Timing(first_seconds=first, step_seconds=tuple(times))
