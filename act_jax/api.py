"""Public API for other tools: a trained ACT model as a plain jit-able function."""

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections
from etils import epath

from act_jax import checkpointing, models, optimizers, parallel
from act_jax.train_state import ACTState, create_act_state, eval_mode_logits

WHICH = ("robust", "natural")


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """A finished (or checkpointed) ACT run: its config, model, dataset metadata and both models."""
  config: ml_collections.ConfigDict
  model: nn.Module
  info: Any  # input_pipeline.DatasetInfo
  state: ACTState
  step: int


def load_run(workdir: str, *, step: int | None = None,
             devices: list[jax.Device] | None = None) -> TrainedRun:
  """Rebuilds a run from `WORKDIR/config.json` and its newest checkpoint (or that of `step`).

  The state is replicated over `devices` (default: the first local device).
  """
  workdir_path = epath.Path(workdir)
  config_path = workdir_path / "config.json"
  if not config_path.exists():
    raise FileNotFoundError(f"{config_path} not found: is {workdir} an act_jax workdir?")
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  from act_jax.data import input_pipeline  # TF, only for the dataset's metadata
  info = input_pipeline.dataset_info(config.dataset.name, data_dir=config.dataset.data_dir,
                                     image_size=config.dataset.image_size,
                                     fashion_mnist_dir=config.dataset.fashion_mnist_dir)
  model = models.from_config(config, info.num_classes)
  # Only the structure matters for restoring; the schedule length does not affect it.
  tx = optimizers.sgd_with_coupled_weight_decay(config.optim, steps_per_epoch=1,
                                                global_batch_size=config.train.batch_size)
  mesh = parallel.make_mesh(devices or jax.local_devices()[:1])
  template = jax.jit(lambda rng: create_act_state(model, tx, rng, info.image_shape),
                     out_shardings=jax.sharding.NamedSharding(mesh, parallel.REPLICATED))(
                         jax.random.PRNGKey(0))
  manager = checkpointing.checkpoint_manager(workdir, max_to_keep=None, read_only=True)
  restored = checkpointing.restore_latest(manager, template, parallel.replicate(
      jax.random.PRNGKey(0), mesh), step=step)
  if restored is None:
    raise FileNotFoundError(f"no checkpoint in {workdir_path / 'checkpoints'}")
  state, _, position = restored
  return TrainedRun(config=config, model=model, info=info, state=state, step=position.step)


def load_model(workdir: str, which: str = "robust") -> Callable[[jax.Array], jax.Array]:
  """`logits = f(images)` for the natural or robust model of the newest checkpoint in `workdir`.

  `images` are NHWC float32 in [0, 1] (no normalisation, as in training); logits are float32.
  The model runs in eval mode (running BatchNorm statistics). The returned function is jitted and
  can be used inside other jitted code, e.g. to attack the model.
  """
  if which not in WHICH:
    raise ValueError(f"which={which!r}; allowed: {', '.join(WHICH)}")
  run = load_run(workdir)
  return jax.jit(eval_mode_logits(getattr(run.state, which)))
