"""`act_jax.export`: every architecture as a `torch.export` program and safetensors weights that
compute the flax model's eval-mode logits, and the command end to end on a tiny ACT run.

Float32 tolerance: |torch - flax| <= 1e-5 * max(1, max |flax logit|) here (the exporter's own
check allows 1e-4). Both frameworks round differently, ~1e-6 relative; a wrong layer, a lost
running statistic or a transposed kernel is off by order one.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import act_jax.export as export_lib
from act_jax import models
from act_jax.train_state import eval_mode_apply

from helpers import REPO, layer_stats, make_tiny_config, random_variables, to_numpy

torch = pytest.importorskip(
    "torch", reason="exporting to PyTorch needs the 'torch' extra (pip install -e .[torch])")
pytest.importorskip("safetensors", reason="exporting needs safetensors (the 'torch' extra)")

NUM_CLASSES = 10
RTOL = 1e-5
# name, base width, image shape (HWC): as small as each architecture allows, so a test takes
# seconds. wrn28_10 at base width 1 keeps all 28 layers at widths 10, 20 and 40.
ARCHITECTURES = [
    ("small_cnn", 4, (28, 28, 1)),
    ("resnet18_cifar", 4, (32, 32, 3)),
    ("wrn28_10", 1, (32, 32, 3)),
    ("resnet50_imagenet", 4, (64, 64, 3)),
]


def flax_logits_fn(model, variables):
  """NHWC images -> logits, as `api.load_model` computes them (eval mode, running stats)."""
  apply = jax.jit(eval_mode_apply(model.apply))
  return lambda images: np.asarray(apply(variables, jnp.asarray(images)))


def nchw_images(image_shape, count=3, seed=7):
  images = np.random.default_rng(seed).uniform(size=(count, *image_shape)).astype(np.float32)
  return images, torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def assert_logits_close(actual, expected, what):
  scale = max(1.0, float(np.abs(expected).max()))
  difference = float(np.abs(actual - expected).max())
  print(f"{what}: max |torch - flax| {difference:.2e} (logits up to {scale:.2f})")
  np.testing.assert_allclose(actual, expected, rtol=0, atol=RTOL * scale, err_msg=what)


def exported(name, base_width, image_shape, directory):
  """Exports a flax model with random weights and running statistics into `directory`."""
  model = models.build_model(name, num_classes=NUM_CLASSES, base_width=base_width)
  variables = to_numpy(random_variables(model, image_shape, seed=1))
  arguments = export_lib.torch_arguments(name, num_classes=NUM_CLASSES, base_width=base_width,
                                         image_shape=image_shape)
  card = export_lib.write_export(directory, name, arguments, variables, {"model": "robust"},
                                 flax_logits_fn(model, variables), image_shape=image_shape)
  return model, variables, card


@pytest.fixture(scope="module", params=ARCHITECTURES, ids=[a[0] for a in ARCHITECTURES])
def architecture(request, tmp_path_factory):
  name, base_width, image_shape = request.param
  directory = str(tmp_path_factory.mktemp(name) / "export")
  model, variables, card = exported(name, base_width, image_shape, directory)
  return name, image_shape, directory, model, variables, card


def test_exported_program_gives_the_flax_logits(architecture):
  """Loaded as anyone would, without act_jax, on a batch size other than the export's."""
  name, image_shape, directory, model, variables, card = architecture
  images, inputs = nchw_images(image_shape)
  program = torch.export.load(os.path.join(directory, "model.pt2")).module()
  with torch.no_grad():
    actual = program(inputs).numpy()
  assert actual.dtype == np.float32 and actual.shape == (3, NUM_CLASSES)
  assert_logits_close(actual, flax_logits_fn(model, variables)(images), f"{name} program")
  with torch.no_grad():
    assert program(inputs[:1]).shape == (1, NUM_CLASSES)  # the batch dimension is dynamic
  assert card["parity"]["program_max_abs_difference"] <= card["parity"]["tolerance"]


def test_safetensors_weights_rebuild_the_model(architecture):
  name, image_shape, directory, model, variables, _ = architecture
  with open(os.path.join(directory, "model.json")) as f:
    card = json.load(f)
  assert card["architecture"] == name and card["arguments"]["num_classes"] == NUM_CLASSES
  torch_model = export_lib.load_torch_model(directory)
  assert not torch_model.training
  images, inputs = nchw_images(image_shape)
  with torch.no_grad():
    actual = torch_model(inputs).numpy()
  assert_logits_close(actual, flax_logits_fn(model, variables)(images), f"{name} safetensors")


def test_running_statistics_reach_the_exported_files(architecture):
  """The running means and variances are the flax ones, not BatchNorm's initial 0 and 1, and
  they matter: with the initial statistics the logits would be far off."""
  from safetensors.torch import load_file
  _, image_shape, directory, model, variables, _card = architecture
  weights = load_file(os.path.join(directory, "model.safetensors"))
  program_state = torch.export.load(os.path.join(directory, "model.pt2")).state_dict
  torch_model = export_lib.load_torch_model(directory)
  names = {id(module): prefix for prefix, module in torch_model.named_modules()}
  compared = 0
  for path, layer in torch_model.flax_layout().items():
    if not isinstance(layer, torch.nn.BatchNorm2d):
      continue
    stats = layer_stats(variables["batch_stats"], path)
    assert np.abs(stats["mean"]).max() > 0.01 and np.abs(stats["var"] - 1).max() > 0.01
    for flax_name, torch_name in (("mean", "running_mean"), ("var", "running_var")):
      key = f"{names[id(layer)]}.{torch_name}"
      np.testing.assert_array_equal(weights[key].numpy(), stats[flax_name], err_msg=key)
      np.testing.assert_array_equal(program_state[key].numpy(), stats[flax_name], err_msg=key)
    compared += 1
  assert compared == len(jax.tree.leaves(variables["batch_stats"])) // 2
  initial = jax.tree.map(np.zeros_like, variables["batch_stats"])
  initial = jax.tree_util.tree_map_with_path(
      lambda p, v: v + 1 if p[-1].key == "var" else v, initial)
  images, _ = nchw_images(image_shape)
  with_initial = flax_logits_fn(model, {**variables, "batch_stats": initial})(images)
  expected = flax_logits_fn(model, variables)(images)
  assert np.abs(with_initial - expected).max() > 100 * RTOL * max(1.0, np.abs(expected).max())


def test_every_act_jax_model_has_a_torch_twin():
  from act_jax.pytorch import models as torch_models
  assert set(torch_models.MODELS) == set(models.MODEL_NAMES)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_every_architecture_converts_layer_for_layer(name):
  """The converter accepts every act_jax model's variables (it raises where the flax and torch
  layers differ) and fills every torch tensor, with the shapes the flax leaves give."""
  from act_jax.pytorch import models as torch_models
  image_shape = (32, 32, 3)
  flax_model = models.build_model(name, num_classes=NUM_CLASSES, base_width=2)
  variables = to_numpy(random_variables(flax_model, image_shape, seed=2))
  arguments = export_lib.torch_arguments(name, num_classes=NUM_CLASSES, base_width=2,
                                         image_shape=image_shape)
  torch_model = torch_models.build_model(name, **arguments)
  state = torch_models.flax_to_torch_state_dict(torch_model, variables["params"],
                                                variables["batch_stats"])
  torch_model.load_state_dict(state, strict=True)
  params, batch_stats = torch_models.torch_to_flax_variables(torch_model)
  jax.tree.map(np.testing.assert_array_equal, params, variables["params"])
  jax.tree.map(np.testing.assert_array_equal, batch_stats, variables["batch_stats"])


def test_an_existing_non_empty_output_is_refused(tmp_path):
  (tmp_path / "taken").mkdir()
  (tmp_path / "taken" / "file").write_text("keep me")
  with pytest.raises(export_lib.ExportError, match="exists and is not empty"):
    exported("small_cnn", 4, (28, 28, 1), str(tmp_path / "taken"))
  assert (tmp_path / "taken" / "file").read_text() == "keep me"
  assert os.listdir(tmp_path) == ["taken"]  # and no staging directory is left behind


def test_missing_torch_names_the_install_command(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(export_lib.ExportError, match=r"pip install -e \.\[torch\]"):
    export_lib.require_torch()
  # The command, in a Python where torch cannot be imported, fails in one line before any work.
  (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
  result = subprocess.run(
      [sys.executable, "-m", "act_jax.export", f"--workdir={tmp_path}",
       f"--output={tmp_path / 'out'}"], cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}"))
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1] == (
      "error: exporting to PyTorch needs torch and safetensors (torch is missing): "
      "pip install -e .[torch]")


# The command end to end, on a tiny ACT run.


@pytest.fixture(scope="module")
def trained_workdir(fake_fashion_mnist_dir, tmp_path_factory):
  """A 4-step ACT run of the tiny config: two models with BatchNorm, checkpointed."""
  from act_jax import train
  root = tmp_path_factory.mktemp("export_run")
  config = make_tiny_config(fake_fashion_mnist_dir, str(root / "tfds"))
  config.train.max_steps = 4
  config.eval.num_examples = 16
  train.train_and_evaluate(config, str(root / "run"))
  return str(root / "run")


def run_export(*flags):
  return subprocess.run([sys.executable, "-m", "act_jax.export", *flags], cwd=REPO,
                        capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, PYTHONPATH=REPO))


@pytest.mark.slow
def test_command_exports_the_newest_checkpoint(trained_workdir, tmp_path):
  from act_jax import api
  output = tmp_path / "new" / "robust"
  result = run_export(f"--workdir={trained_workdir}", "--model=robust", f"--output={output}")
  assert result.returncode == 0, result.stderr[-5000:]
  assert "at step 4" in result.stdout and "warning: the run" not in result.stderr
  assert sorted(os.listdir(output)) == ["model.json", "model.pt2", "model.safetensors"]
  with open(output / "model.json") as f:
    card = json.load(f)
  assert card["step"] == 4 and card["model"] == "robust" and card["method"] == "act"
  assert card["run_finished"] is True and card["architecture"] == "small_cnn"
  assert card["input"]["layout"] == "NCHW" and card["input"]["range"] == [0.0, 1.0]
  images, inputs = nchw_images((28, 28, 1), count=5)
  program = torch.export.load(str(output / "model.pt2")).module()
  with torch.no_grad():
    actual = program(inputs).numpy()
  expected = np.asarray(api.load_model(trained_workdir, "robust")(jnp.asarray(images)))
  assert_logits_close(actual, expected, "exported robust model")
  natural = np.asarray(api.load_model(trained_workdir, "natural")(jnp.asarray(images)))
  assert np.abs(natural - expected).max() > 1e-3  # the robust model, not the natural one

  again = run_export(f"--workdir={trained_workdir}", f"--output={output}")
  assert again.returncode == 2 and "Traceback" not in again.stderr
  assert again.stderr.strip().splitlines()[-1] == (
      f"error: --output={output} exists and is not empty; choose a new directory (an export "
      "never overwrites)")


@pytest.mark.slow
def test_command_errors_are_one_line(trained_workdir, tmp_path):
  result = run_export(f"--workdir={trained_workdir}", "--model=teacher",
                      f"--output={tmp_path / 'out'}")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "error: --model=teacher: this act run has natural, robust")
  assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_unfinished_runs_are_told_apart(tmp_path):
  from act_jax import api
  (tmp_path / "results.json").write_text(json.dumps({"total_steps": 8, "train_log": []}))
  assert api.run_status(str(tmp_path), 3) == (False, 8)
  (tmp_path / "results.json").write_text(json.dumps({"total_steps": 8, "final": {}}))
  assert api.run_status(str(tmp_path), 8) == (True, 8)
  assert api.run_status(str(tmp_path / "missing"), 8) == (None, None)
