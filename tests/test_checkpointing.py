"""Checkpoints round-trip the ACT state, RNG and data position, and keep only the newest N."""

import asyncio
import gc
import logging
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tensorstore as ts

from act_jax import checkpointing, parallel
from act_jax.train_state import ACTState, ModelState


def make_state(value: float) -> ACTState:
  def model():
    state = ModelState.create(apply_fn=None, params={"w": jnp.full((3,), value)},
                              tx=optax.sgd(0.1, momentum=0.9), batch_stats={"m": jnp.zeros(2)})
    return state.replace(step=jnp.asarray(int(value), jnp.int32),
                         opt_state=jax.tree.map(lambda x: x - value, state.opt_state))

  return parallel.replicate(ACTState(natural=model(), robust=model()), parallel.make_mesh())


def test_round_trip_with_relative_workdir_and_keep_n(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  manager = checkpointing.checkpoint_manager("relative/workdir", max_to_keep=2)
  rng = parallel.replicate(jax.random.PRNGKey(3), parallel.make_mesh())
  for step in (1, 2, 3):
    checkpointing.save(manager, make_state(float(step)), rng, step)
  manager.wait_until_finished()
  assert manager.all_steps() == [2, 3]

  restored = checkpointing.restore_latest(
      checkpointing.checkpoint_manager("relative/workdir", max_to_keep=2), make_state(0.0), rng)
  state, restored_rng, step = restored
  assert step == 3
  np.testing.assert_array_equal(state.robust.params["w"], np.full(3, 3.0))
  np.testing.assert_array_equal(state.natural.opt_state[0].trace["w"], np.full(3, -3.0))
  assert int(state.step) == 3
  np.testing.assert_array_equal(restored_rng, jax.random.PRNGKey(3))


def test_restore_latest_without_checkpoint_is_none(tmp_path):
  manager = checkpointing.checkpoint_manager(str(tmp_path), max_to_keep=1)
  rng = parallel.replicate(jax.random.PRNGKey(0), parallel.make_mesh())
  assert checkpointing.restore_latest(manager, make_state(0.0), rng) is None


def _orphaned_failure(message: str) -> None:
  """An asyncio task that fails and is freed unawaited, as orbax's read tasks are after a
  failed restore: asyncio logs 'Task exception was never retrieved' when it is collected."""

  async def read() -> None:
    raise ValueError(message)

  loop = asyncio.new_event_loop()
  task = loop.create_task(read())
  loop.run_until_complete(asyncio.sleep(0.01))
  assert task.done()
  loop.close()
  del task
  gc.collect()


def test_a_damaged_checkpoint_is_reported_once_and_asyncio_stays_quiet_about_it(
    tmp_path, caplog, capfd):
  manager = checkpointing.checkpoint_manager(str(tmp_path), max_to_keep=None)
  rng = parallel.replicate(jax.random.PRNGKey(0), parallel.make_mesh())
  for step in (3, 6):
    checkpointing.save(manager, make_state(float(step)), rng, step)
  manager.wait_until_finished()
  for data in (tmp_path / "checkpoints" / "6" / "state" / "d").iterdir():
    data.write_bytes(data.read_bytes()[:10])

  _, _, step = checkpointing.restore_latest(
      checkpointing.checkpoint_manager(str(tmp_path), None, read_only=True), make_state(0.0), rng)
  assert step == 3
  assert capfd.readouterr().err.count("checkpoint step 6") == 1

  damaged = tmp_path / "checkpoints" / "6"
  with caplog.at_level(logging.ERROR, logger="asyncio"):
    _orphaned_failure(f'Error reading "w" in OCDBT database at local file "{damaged}/state/"')
    assert not caplog.records  # the checkpoint already reported
    _orphaned_failure(f'Error reading "w" in local file "{tmp_path}/checkpoints/60/state/"')
    assert [r.getMessage().splitlines()[0] for r in caplog.records] == [
        "Task exception was never retrieved"]  # any other failure is still told


def _tensorstore_write_finishing_after_its_loop_closed() -> None:
  """What a failed save leaves behind: a tensorstore future, awaited on an event loop that has
  closed since, finishes and asks that loop to wake its awaiter."""
  promise, future = ts.Promise.new()

  async def abandon() -> None:
    async def wait() -> None:
      await future
    asyncio.get_running_loop().create_task(wait())
    await asyncio.sleep(0)

  loop = asyncio.new_event_loop()
  loop.run_until_complete(abandon())
  loop.close()
  promise.set_result(None)


def test_writes_finishing_after_a_failed_save_print_nothing_and_other_errors_still_do(
    tmp_path, monkeypatch):
  told = []
  monkeypatch.setattr(sys, "unraisablehook", told.append)
  _tensorstore_write_finishing_after_its_loop_closed()
  assert [str(u.exc_value) for u in told] == ["Event loop is closed"]  # unfiltered, it is told

  told.clear()
  checkpointing.checkpoint_manager(str(tmp_path), max_to_keep=None)
  _tensorstore_write_finishing_after_its_loop_closed()
  assert not told

  class Unclosable:
    def __del__(self):
      raise RuntimeError("Event loop is closed")  # the same words, from elsewhere

  Unclosable()
  gc.collect()
  assert [str(u.exc_value) for u in told] == ["Event loop is closed"]
