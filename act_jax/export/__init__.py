"""A trained model as plain PyTorch: a `torch.export` program, safetensors weights, a JSON card.

    python -m act_jax.export --workdir=RUN --model=robust --output=DIR

writes, for one model of the run's newest checkpoint (or `--step`), in eval mode (running
BatchNorm statistics) and taking NCHW float32 images in [0, 1] with no normalisation:

- `DIR/model.pt2`: a `torch.export` program, loadable without act_jax:
  `torch.export.load("DIR/model.pt2").module()(x)` gives float32 logits;
- `DIR/model.safetensors`: the `state_dict` of the same model in `act_jax.pytorch.models`, for
  fine-tuning or inspection (`load_torch_model(DIR)` rebuilds it);
- `DIR/model.json`: the architecture and its constructor arguments, the run, step and model it
  came from, the input layout and range, and the parity check the export passed.

Exporting checks itself: both files, read back, must give the flax model's float32 eval-mode
logits on random images, or nothing is written. Torch is an optional extra, imported only here
and only when needed, so that the rest of act_jax never depends on it.
"""

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any

import numpy as np

from act_jax.errors import UserError

PROGRAM_FILE = "model.pt2"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"
FORMAT = "act_jax.export/1"
INSTALL_HINT = "pip install -e .[torch]"
# The parity check: |torch - flax| <= TOLERANCE * max(1, max |flax logit|). Float32 rounding of
# a ResNet-50 differs by ~1e-6 relative between the frameworks; a wrong layer by order one.
TOLERANCE = 1e-4
CHECK_IMAGES = 4


class ExportError(UserError):
  """The export cannot be done as asked: torch missing, an unusable flag, a taken output."""


class ParityError(RuntimeError):
  """The exported model's logits differ from the flax model's: a bug in the converters."""


def require_torch() -> tuple[Any, Any]:
  """(torch, safetensors.torch), or an `ExportError` naming the install command."""
  try:
    import safetensors.torch
    import torch
  except ImportError as error:
    raise ExportError(f"exporting to PyTorch needs torch and safetensors ({error.name} is "
                      f"missing): {INSTALL_HINT}") from None
  return torch, safetensors.torch


def torch_arguments(name: str, *, num_classes: int, base_width: int | None,
                    image_shape: tuple[int, int, int]) -> dict[str, Any]:
  """Constructor arguments of `act_jax.pytorch.models.build_model(name, **arguments)` for the
  act_jax model `name` on images of `image_shape` (HWC).

  Torch sizes layers at construction that flax infers from the first batch: the input
  channels, and small_cnn's dense layer (hence its image size).
  """
  height, width, channels = image_shape
  arguments: dict[str, Any] = {"num_classes": num_classes, "in_channels": channels}
  if base_width is not None:
    arguments["base_width"] = base_width
  if name == "small_cnn":
    if height != width:
      raise ExportError(f"small_cnn exports only square images, not {height}x{width}")
    arguments["image_size"] = height
  return arguments


def build_torch_model(card: dict[str, Any]):
  """The `act_jax.pytorch.models` module a card describes, in eval mode, weights untouched."""
  require_torch()
  from act_jax.pytorch import models as torch_models
  return torch_models.build_model(card["architecture"], **card["arguments"]).eval()


def load_torch_model(directory: str):
  """The exported model rebuilt from `DIR/model.json` and `DIR/model.safetensors`, in eval mode.

  Unlike the `torch.export` program this is an ordinary `nn.Module` (trainable, `.train()`-able)
  and needs act_jax; the two compute the same logits.
  """
  _, safetensors_torch = require_torch()
  with open(os.path.join(directory, CARD_FILE)) as f:
    card = json.load(f)
  model = build_torch_model(card)
  model.load_state_dict(safetensors_torch.load_file(os.path.join(directory, WEIGHTS_FILE)),
                        strict=True)
  return model


@dataclasses.dataclass(frozen=True)
class Parity:
  """How far the exported files' logits are from the flax model's on `num_images` images."""
  num_images: int
  max_abs_logit: float
  program_max_abs_difference: float
  weights_max_abs_difference: float

  @property
  def bound(self) -> float:
    return TOLERANCE * max(1.0, self.max_abs_logit)

  @property
  def passed(self) -> bool:
    return max(self.program_max_abs_difference, self.weights_max_abs_difference) <= self.bound


def check_output_is_free(output: str) -> None:
  """Refuses an existing file, or a directory that holds anything: an export never overwrites."""
  if os.path.isdir(output):
    if os.listdir(output):
      raise ExportError(f"--output={output} exists and is not empty; choose a new directory "
                        "(an export never overwrites)")
  elif os.path.lexists(output):
    raise ExportError(f"--output={output} exists and is not a directory")


def write_export(output: str, name: str, arguments: dict[str, Any], variables: dict[str, Any],
                 card: dict[str, Any], flax_logits_fn, *, image_shape: tuple[int, int, int],
                 seed: int = 0) -> dict[str, Any]:
  """Converts flax `variables` (params, batch_stats) of model `name`, writes the three files
  into `output` and checks them against `flax_logits_fn` (NHWC images -> logits).

  The files are written into a new directory beside `output` and moved there only once the
  check has passed, so a failed export leaves nothing behind and `output` is never half
  written. Returns the card as written, the check's numbers under "parity".
  """
  torch, safetensors_torch = require_torch()
  from act_jax.pytorch import models as torch_models

  check_output_is_free(output)
  card = {"format": FORMAT, "architecture": name, "arguments": arguments, **card,
          "files": {"program": PROGRAM_FILE, "weights": WEIGHTS_FILE},
          "torch_version": torch.__version__}
  model = torch_models.load_flax_variables(torch_models.build_model(name, **arguments),
                                           variables["params"],
                                           variables.get("batch_stats", {})).eval()
  height, width, channels = image_shape
  example = torch.rand(2, channels, height, width)
  batch = torch.export.Dim("batch", min=1, max=1 << 20)
  with torch.no_grad():
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))

  parent = os.path.dirname(os.path.abspath(output))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(output))}.", dir=parent)
  try:
    torch.export.save(program, os.path.join(staging, PROGRAM_FILE))
    state = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    safetensors_torch.save_file(state, os.path.join(staging, WEIGHTS_FILE),
                                metadata={"format": FORMAT, "architecture": name})
    _write_card(staging, card)
    parity = _check(staging, flax_logits_fn, image_shape, seed)
    card["parity"] = {**dataclasses.asdict(parity), "tolerance": parity.bound}
    _write_card(staging, card)
    if not parity.passed:
      worst = max(parity.program_max_abs_difference, parity.weights_max_abs_difference)
      raise ParityError(f"the exported model's logits differ from the flax model's by up to "
                        f"{worst:.3g} (allowed {parity.bound:.3g}); nothing was written")
    check_output_is_free(output)  # nothing appeared there meanwhile
    if os.path.isdir(output):
      os.rmdir(output)
    os.rename(staging, output)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return card


def _write_card(directory: str, card: dict[str, Any]) -> None:
  with open(os.path.join(directory, CARD_FILE), "w") as f:
    json.dump(card, f, indent=2)
    f.write("\n")


def _check(directory: str, flax_logits_fn, image_shape: tuple[int, int, int],
           seed: int) -> Parity:
  """Both files read back from disk, as a user would, against the flax model's logits."""
  torch, _ = require_torch()
  images = np.random.default_rng(seed).uniform(size=(CHECK_IMAGES, *image_shape))
  images = images.astype(np.float32)
  expected = np.asarray(flax_logits_fn(images), np.float32)
  inputs = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  program = torch.export.load(os.path.join(directory, PROGRAM_FILE)).module()
  with torch.no_grad():
    from_program = program(inputs).numpy()
    from_weights = load_torch_model(directory)(inputs).numpy()
  return Parity(num_images=CHECK_IMAGES, max_abs_logit=float(np.abs(expected).max()),
                program_max_abs_difference=float(np.abs(from_program - expected).max()),
                weights_max_abs_difference=float(np.abs(from_weights - expected).max()))


def export_run(workdir: str, output: str, *, which: str | None = None,
               step: int | None = None) -> dict[str, Any]:
  """Exports model `which` (default: the robust one where there is one) of the run in
  `workdir`, at its newest checkpoint or `step`, into `output`. Returns the written card.
  """
  require_torch()  # before the slow part: loading the run compiles its initialisation
  check_output_is_free(output)
  import jax
  import jax.numpy as jnp

  from act_jax import api, models
  from act_jax.train_state import eval_mode_apply

  run = api.load_run(workdir, step=step)
  which = which or run.method.default_model
  if which not in run.models:
    raise ExportError(f"--model={which}: this {run.method.name} run has "
                      f"{', '.join(run.method.model_names)}")
  config, info = run.config, run.info
  name = config.model.name
  variables = jax.device_get(run.models[which].variables)
  # The check runs flax in float32 too: a bfloat16-trained model is exported in float32 (its
  # weights are float32), and its bfloat16 logits would differ by rounding alone.
  flax_model = models.build_model(name, num_classes=info.num_classes, dtype=jnp.float32,
                                  base_width=config.model.base_width)
  apply = jax.jit(eval_mode_apply(flax_model.apply))
  image_shape = tuple(info.image_shape)
  height, width, channels = image_shape
  card = {
      "workdir": os.path.abspath(workdir), "method": run.method.name, "model": which,
      "step": run.step, "total_steps": run.total_steps, "run_finished": run.finished,
      "dataset": info.name, "num_classes": info.num_classes,
      "input": {"layout": "NCHW", "shape": [channels, height, width], "dtype": "float32",
                "range": [0.0, 1.0], "normalization": None, "batch": "any size >= 1"},
      "output": "float32 logits [batch, num_classes], eval mode (running BatchNorm statistics)",
      "trained_compute_dtype": config.model.dtype, "exported_compute_dtype": "float32",
  }
  arguments = torch_arguments(name, num_classes=info.num_classes,
                              base_width=config.model.base_width, image_shape=image_shape)
  return write_export(output, name, arguments, variables, card,
                      lambda images: apply(variables, jnp.asarray(images)),
                      image_shape=image_shape)
