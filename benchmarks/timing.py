"""Wall-clock timing of training steps, two ways.

- `time_window`: N steps between two synchronisations, as training runs them (it dispatches
  asynchronously and only waits when it fetches metrics). This is the throughput a user gets.
- `time_calls`: each call synchronised and timed on its own, reported as the median. Robust to a
  stray slow call, but it adds each step's launch latency (4 to 12% on an H100, see
  benchmarks/RESULTS.md), so it understates training throughput.

Every first call is timed apart (compilation, autotuning, CUDA-graph capture).
"""

import dataclasses
import statistics
import time
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Timing:
  """`first_seconds`: the first call; `step_seconds`: the per-call timed calls (`time_calls`)
  or one entry, the window's mean per step (`time_window`)."""
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

  Every call passed here must block until its device work is done (`jax.block_until_ready`,
  `torch.cuda.synchronize`), or the clock measures only the dispatch of asynchronous work.
  `clock` is read before and after each timed call.
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


def time_window(step: Callable[[], object], synchronize: Callable[[], object], *,
                warmup_steps: int, timed_steps: int,
                clock: Callable[[], float] = time.perf_counter) -> Timing:
  """Times `timed_steps` calls of `step` (which need not wait for the device) between two
  calls of `synchronize`, after `warmup_steps` (the first timed apart, synchronised)."""
  if warmup_steps < 1 or timed_steps < 1:
    raise ValueError(f"warmup_steps ({warmup_steps}) and timed_steps ({timed_steps}) must be >= 1")
  start = clock()
  step()
  synchronize()
  first = clock() - start
  for _ in range(warmup_steps - 1):
    step()
  synchronize()
  start = clock()
  for _ in range(timed_steps):
    step()
  synchronize()
  return Timing(first_seconds=first, step_seconds=((clock() - start) / timed_steps,))
