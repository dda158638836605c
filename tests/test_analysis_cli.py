"""`python -m act_jax.analysis` on a tiny ACT run: every measure, deterministic given its seed,
the same on 8 devices as on 1, its one-line errors, and a study's table."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from act_jax import train

from helpers import REPO

pytestmark = pytest.mark.slow


def analyse(*flags: str, devices: int = 1) -> subprocess.CompletedProcess:
  environment = dict(os.environ, PYTHONPATH=REPO,
                     XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.run([sys.executable, "-m", "act_jax.analysis", *flags], cwd=REPO,
                        env=environment, capture_output=True, text=True, timeout=900)


def numbers(tree, prefix=""):
  """Every number of an analysis.json, by its path (timings and metadata left out)."""
  if isinstance(tree, dict):
    return {k: v for key, value in tree.items() if key not in ("seconds", "meta")
            for k, v in numbers(value, f"{prefix}/{key}").items()}
  if isinstance(tree, list):
    return {k: v for index, value in enumerate(tree)
            for k, v in numbers(value, f"{prefix}/{index}").items()}
  return {prefix: tree} if isinstance(tree, (int, float)) else {}


@pytest.fixture(scope="module")
def act_run(tmp_path_factory, fake_fashion_mnist_dir):
  from helpers import make_tiny_config
  root = tmp_path_factory.mktemp("analysis")
  config = make_tiny_config(fake_fashion_mnist_dir, str(root / "tfds"))
  workdir = str(root / "run")
  train.train_and_evaluate(config, workdir)
  return workdir


def test_every_measure_is_deterministic_and_independent_of_the_device_count(act_run, tmp_path):
  measures = "--measures=entropy,generalisation,hessian,hessian_trace,weight_noise,landscape," \
             "pac_bayes,fisher_rao,effective_rank,mutual_information,alignment"
  results = {}
  for name, devices in (("one", 1), ("again", 1), ("eight", 8)):
    output = tmp_path / name
    result = analyse(f"--workdir={act_run}", measures, "--num_examples=16",
                     f"--output={output}", devices=devices)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(output / "analysis.json") as f:
      results[name] = json.load(f)
    assert results[name]["meta"]["devices"] == devices
  assert (tmp_path / "one" / "analysis_landscape.png").stat().st_size > 0
  assert (tmp_path / "one" / "analysis_weight_noise.png").stat().st_size > 0
  one = numbers(results["one"])
  assert one == numbers(results["again"])
  eight = numbers(results["eight"])
  assert sorted(eight) == sorted(one)
  for path, value in one.items():
    np.testing.assert_allclose(eight[path], value, rtol=1e-3, atol=1e-4, err_msg=path)
  # The Fisher-Rao norm against eager jax.jvp on this trained model, whose compiled product
  # with the parameters as their own tangent came out wrong (see act_jax.analysis.complexity).
  import jax

  from act_jax import api
  from act_jax.data import datasets
  run = api.load_run(act_run)
  state = run.models["natural"]
  images = datasets.in_memory_split(run.config.dataset, "train").images[:16]
  images = images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)
  logits, along = jax.jvp(
      lambda p: run.experiment.eval_apply({"params": p, "batch_stats": state.batch_stats},
                                          images), (state.params,), (state.params,))
  p = np.asarray(jax.nn.softmax(logits), np.float64)
  u = np.asarray(along, np.float64)
  eager = np.sqrt(np.mean(np.sum(p * u**2, 1) - np.sum(p * u, 1) ** 2))
  np.testing.assert_allclose(results["one"]["models"]["natural"]["fisher_rao"]["norm"], eager,
                             rtol=1e-4)
  models = results["one"]["models"]
  assert set(models) == {"natural", "robust"}
  for measures in models.values():
    assert set(measures) == {"entropy", "generalisation", "hessian", "hessian_trace",
                             "weight_noise", "landscape", "pac_bayes", "fisher_rao",
                             "effective_rank", "mutual_information"}
    assert 0 <= measures["entropy"]["clean"] <= np.log(10)
    assert measures["effective_rank"]["penultimate"] >= 1.0
    assert "penultimate" in measures["mutual_information"]
  cka = results["one"]["alignment"]["clean"]["cka"]
  assert "penultimate" in cka and all(0.0 <= v <= 1.0 + 1e-9 for v in cka.values())


@pytest.mark.parametrize("flags, fragment", [
    (("--measures=hessian,flatness",), "--measures=hessian,flatness: allowed: entropy"),
    (("--models=teacher",), "--models=teacher: this act run has natural, robust"),
    (("--num_examples=0",), "--num_examples=0: must be >= 1"),
])
def test_bad_flags_get_one_line(act_run, tmp_path, flags, fragment):
  result = analyse(f"--workdir={act_run}", *flags, f"--output={tmp_path}")
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert fragment in lines[-1] and len(lines) == 1, result.stderr[-2000:]
  assert not (tmp_path / "analysis.json").exists()


def test_a_study_uses_the_committed_analysis_of_a_run_without_checkpoints(act_run, tmp_path):
  """A checkout holds a study's run records, not their checkpoints: an analysis with the
  requested settings is reported; a run with none (or stale settings) is listed as absent."""
  from act_jax.analysis import runner
  from act_jax.analysis import study as analysis_study
  request = runner.AnalysisRequest(workdir="", measures=("entropy",), num_examples=8)
  record_only = tmp_path / "committed" / "act" / "seed0"
  record_only.mkdir(parents=True)
  runner.analyse_run(dataclasses.replace(request, workdir=act_run, output=str(record_only)))
  stale = tmp_path / "committed" / "act" / "seed1"
  stale.mkdir(parents=True)
  stale_record = json.loads((record_only / "analysis.json").read_text())
  stale_record["meta"]["num_examples"] = 16
  (stale / "analysis.json").write_text(json.dumps(stale_record))
  study = {"runs": [{"method": "act", "epochs": 1, "seed": seed, "workdir": str(path)}
                    for seed, path in ((0, record_only), (1, stale))]}
  (tmp_path / "study.json").write_text(json.dumps(study))
  analysis_study.analyse_study(str(tmp_path), request, str(tmp_path / "out"))
  written = json.loads((tmp_path / "out" / "analysis.json").read_text())
  assert [run["seed"] for run in written["runs"]] == [0]
  assert written["absent_runs"] == [str(stale)]
