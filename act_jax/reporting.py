"""What a run tells its user: a progress bar with img/s and ETA, TensorBoard scalars, JSON.

Only process 0 reports; the other processes get no-op writers so the loop needs no branches.
`clu.metric_writers` and `clu.periodic_actions` would fit here, but importing either imports
TensorFlow (clu's default writer is a TF summary writer), and act_jax must run without it.
"""

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import tqdm
from etils import epath

from act_jax import write_failures

# The progress bar redraws at most this often (seconds).
PROGRESS_REFRESH_S = 1.0


class Progress:
  """A tqdm bar over the run's steps with loss, img/s and tqdm's own ETA.

  The count moves as steps finish (`advance`, as often as the loop learns of one, redrawn at
  most every `PROGRESS_REFRESH_S`); losses and img/s change with each logged step (`update`).
  """

  def __init__(self, *, total_steps: int, start_step: int, global_batch_size: int, enabled: bool):
    self._bar = tqdm.tqdm(total=total_steps, initial=start_step, disable=not enabled,
                          unit="step", dynamic_ncols=True, file=sys.stdout,
                          mininterval=PROGRESS_REFRESH_S, miniters=1)
    self._batch = global_batch_size
    self._enabled = enabled
    self._shown = start_step
    self._last_step, self._last_time = start_step, time.perf_counter()

  def advance(self, step: int | None) -> None:
    """Moves the count to `step` steps done (None, or a step already shown: no change)."""
    if step is not None and step > self._shown:
      self._bar.update(step - self._shown)
      self._shown = step

  def update(self, step: int, metrics: Mapping[str, float]) -> float:
    """Advances to `step` (steps done) and returns the images/s since the last update."""
    now = time.perf_counter()
    images_per_second = (step - self._last_step) * self._batch / max(now - self._last_time, 1e-9)
    self.advance(step)
    losses = {name.replace("/loss", " loss"): f"{value:.3f}" for name, value in metrics.items()
              if name.endswith("/loss")}
    self._bar.set_postfix({**losses, "img/s": f"{images_per_second:.0f}"}, refresh=False)
    self._last_step, self._last_time = step, now
    return images_per_second

  def reset_clock(self) -> None:
    """Excludes time spent outside training (evaluation, checkpoints) from the next img/s."""
    self._last_time = time.perf_counter()

  def write(self, message: str) -> None:
    """Prints above the bar; like the bar, only where enabled (on process 0)."""
    if self._enabled:
      self._bar.write(message, file=sys.stdout)

  def close(self) -> None:
    self._bar.close()


class ScalarWriter:
  """TensorBoard scalars under `workdir/tensorboard`; a no-op where `enabled` is False."""

  def __init__(self, workdir: str, *, enabled: bool):
    self._writer = None
    if enabled:
      from tensorboardX import SummaryWriter
      self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if self._writer is not None:
      with write_failures.reported("the TensorBoard log", self._writer.logdir):
        for name, value in scalars.items():
          self._writer.add_scalar(name, value, step)
        self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      with write_failures.reported("the TensorBoard log", self._writer.logdir):
        self._writer.close()


def json_safe(value: Any) -> Any:
  """`value` with every NaN or infinity replaced by None: strict JSON has no such numbers."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, Mapping):
    return {key: json_safe(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(item) for item in value]
  return value


def read_json(path: epath.PathLike) -> Any:
  return json.loads(epath.Path(path).read_text())


def write_json(path: epath.PathLike, payload: Mapping[str, Any]) -> None:
  """Writes strict JSON via a temporary file and a rename, so a crash never leaves a
  half-written file and a diverged run never leaves bare NaN tokens."""
  path = epath.Path(path)
  temporary = path.with_name(path.name + ".tmp")
  text = json.dumps(json_safe(payload), indent=2, sort_keys=True, allow_nan=False)
  with write_failures.reported(path.name, path):
    try:
      temporary.write_text(text)
      temporary.replace(path)
    except OSError:
      with contextlib.suppress(OSError):
        temporary.unlink()
      raise
