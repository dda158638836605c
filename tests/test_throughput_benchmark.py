"""`python -m benchmarks.throughput` end to end on a tiny workload, and what its figures rest on.

Timings themselves are not asserted (speed targets live in the benchmark, not in tests); what is
checked is that the benchmark measures what it says: the FLOP count it divides by, the ratio it
reports and the files it writes.
"""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import reports, throughput, timing
from benchmarks import timing as timing_lib

from helpers import REPO

TINY = ["--model", "small_cnn", "--batch", "4", "--pgd_steps", "2", "--warmup_steps", "1",
        "--timed_steps", "2", "--matmul_size", "128"]


def test_time_calls_times_each_timed_call_after_the_warmup():
  """A fake clock that each call advances by its own duration: the first call is reported
  apart, the untimed warm-up calls are left out, and the median is over the timed ones."""
  durations = iter([5.0, 7.0, 7.0, 1.0, 3.0, 2.0, 100.0])
  now = [0.0]
  result = timing.time_calls(lambda: now.__setitem__(0, now[0] + next(durations)),
                             warmup_calls=3, timed_calls=4, clock=lambda: now[0])
  assert result.first_seconds == 5.0
  assert result.step_seconds == (1.0, 3.0, 2.0, 100.0)
  assert result.median_seconds == 2.5
  assert result.spread == pytest.approx(99.0 / 2.5)


def test_time_calls_rejects_zero_counts():
  with pytest.raises(ValueError, match="warmup_calls"):
    timing.time_calls(lambda: None, warmup_calls=0, timed_calls=1)


@pytest.mark.parametrize("argv, message", [
    (["--model", "vgg"], "invalid choice"),
    (["--model", "small_cnn", "--settings", "jax_f64"], "unknown --settings jax_f64; allowed"),
    (["--model", "small_cnn", "--batch", "0"], "--batch must be >= 1"),
])
def test_bad_flags_are_named(argv, message, capsys):
  with pytest.raises(SystemExit):
    throughput.parse_args(argv)
  assert message in capsys.readouterr().err


def default_output_dirs(monkeypatch) -> dict[str, str]:
  """Each benchmark's output directory when no --output_dir is given, read without running one
  (jax_step_variants parses its flags inside main: its runs and writes are replaced)."""
  from benchmarks import attack_throughput, jax_step_variants, loop_throughput
  written = []
  monkeypatch.setattr(jax_step_variants, "run_variant_in_subprocess",
                      lambda variant, args: {"variant": variant, "error": "not run"})
  monkeypatch.setattr(jax_step_variants, "time_building_blocks", lambda args: [])
  monkeypatch.setattr(reports, "write_report",
                      lambda output_dir, *_: written.append(str(output_dir)))
  jax_step_variants.main(["--model", "small_cnn", "--variants", "shipped"])
  return {"throughput": throughput.parse_args(["--model", "small_cnn"]).output_dir,
          "loop_throughput": loop_throughput.parse_args(["--model", "small_cnn"]).output_dir,
          "attack_throughput": attack_throughput.parse_args(
              ["--workload", "small_cnn"]).output_dir,
          "jax_step_variants": written[0]}


def test_benchmarks_write_outside_the_committed_results_by_default(monkeypatch):
  """benchmarks/results holds the tables RESULTS.md cites: a run writes there only when asked."""
  benchmarks = ("throughput", "loop_throughput", "attack_throughput", "jax_step_variants")
  assert default_output_dirs(monkeypatch) == dict.fromkeys(benchmarks, "workdirs/benchmarks")
  assert throughput.parse_args(["--model", "small_cnn", "--output_dir", "benchmarks/results"]
                               ).output_dir == "benchmarks/results"


@pytest.mark.slow
def test_the_command_runs_one_cpu_device_per_core_and_writes_to_workdirs(tmp_path):
  """As a command, the benchmark runs JAX as RESULTS.md's CPU tables did, one XLA device per
  core (as many as divide the batch), and writes under ./workdirs/benchmarks."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.throughput", *TINY, "--settings", "jax_f32"],
      cwd=tmp_path, env=dict(env, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"), capture_output=True,
      text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  cores = len(os.sched_getaffinity(0))
  devices = max(n for n in range(1, cores + 1) if 4 % n == 0)  # TINY's batch is 4
  (written,) = (tmp_path / "workdirs" / "benchmarks").glob("*.json")
  assert written.name == f"small_cnn_b4_k2_cpu_{devices}dev.json"
  report = json.loads(written.read_text())
  assert report["meta"]["jax_devices"] == devices
  assert report["peaks"]["float32"]["flops_per_second"]["jax"] > 0  # on every device at once
  assert report["meta"]["command"].startswith("python -m benchmarks.throughput --model small_cnn")


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory):
  output_dir = tmp_path_factory.mktemp("throughput")
  report = throughput.main([*TINY, "--settings", "jax_f32", "--output_dir", str(output_dir)])
  return report, output_dir


def test_jax_only_run_writes_json_and_table(jax_run):
  report, tmp_path = jax_run
  written = json.loads((tmp_path / "small_cnn_b4_k2_cpu_1dev.json").read_text())
  assert written == json.loads(json.dumps(report))
  (row,) = written["results"]
  assert row["setting"] == "jax_f32" and row["images_per_second"] > 0
  assert row["per_step_images_per_second"] > 0 and len(row["per_step_seconds"]) == 2
  assert "| jax_f32 |" in (tmp_path / "small_cnn_b4_k2_cpu_1dev.md").read_text()


def test_analytic_step_flops_match_xla_cost_analysis_of_the_unrolled_step(jax_run):
  """(6 + 2K) x forward is the FLOP model MFU rests on; on CPU the attack loop is unrolled, so
  XLA's cost analysis of the whole compiled step is an independent count to check it against.
  XLA leaves out kernel taps on padding, so its count is a little lower, never higher."""
  flops = jax_run[0]["flops"]
  xla = flops["xla_cost_analysis_step_flops_per_image"]
  assert xla is not None
  assert 0.85 * flops["step_flops_per_image"] < xla <= flops["step_flops_per_image"]


@pytest.mark.parametrize("model,image_shape,num_classes,published_macs", [
    ("resnet18_cifar", (32, 32, 3), 10, 0.556e9),  # kuangliu/pytorch-cifar's ResNet-18: 0.56 G
    ("resnet50_imagenet", (224, 224, 3), 1000, 4.09e9),  # torchvision's resnet50: 4.09 G
    ("wrn28_10", (32, 32, 3), 10, 5.25e9),  # WRN-28-10 (Zagoruyko & Komodakis): 5.25 G
])
def test_forward_flops_match_the_published_figures(model, image_shape, num_classes,
                                                   published_macs):
  """The count behind MFU, from the program, against the multiply-accumulates usually quoted
  (2 FLOPs each). It does not depend on the backend, unlike XLA's cost analysis on GPU."""
  import functools

  import jax
  import jax.numpy as jnp

  from act_jax import models
  from benchmarks import flops
  network = models.build_model(model, num_classes=num_classes)
  variables = jax.eval_shape(functools.partial(network.init, train=False),
                             jax.random.PRNGKey(0), jnp.zeros((1, *image_shape)))
  counted = flops.forward_flops_per_image(functools.partial(network.apply, train=False),
                                          variables, image_shape)
  assert counted == pytest.approx(2 * published_macs, rel=0.01)


def test_cuda_only_settings_are_skipped_on_cpu_with_their_reason(tmp_path):
  report = throughput.main([*TINY, "--settings", "jax_f32,torch_graph_f32,torch_eager_bf16",
                            "--output_dir", str(tmp_path)])
  skipped = {row["setting"]: row["skipped"] for row in report["results"] if "skipped" in row}
  assert skipped == {"torch_graph_f32": "CUDA graphs need a CUDA device",
                     "torch_eager_bf16": "bf16 autocast is CUDA-only"}


@pytest.mark.slow
def test_torch_and_jax_in_one_run_report_the_speedup_over_the_best_torch(tmp_path):
  """Eager and the whole step under torch.compile; JAX's speed-up is over the faster one."""
  pytest.importorskip("torch", reason="the PyTorch baseline needs torch (the 'torch' extra)")
  report = throughput.main([*TINY, "--settings", "jax_f32,torch_eager_f32,torch_compile_f32",
                            "--output_dir", str(tmp_path)])
  jax_row, *torch_rows = report["results"]
  assert all("error" not in row for row in torch_rows), torch_rows
  best = max(torch_rows, key=lambda row: row["images_per_second"])
  assert jax_row["best_torch"] == best["setting"]
  assert jax_row["speedup_over_best_torch"] == pytest.approx(
      jax_row["images_per_second"] / best["images_per_second"])
  for row in torch_rows:
    assert row["jax_speedup"] == pytest.approx(
        jax_row["images_per_second"] / row["images_per_second"])
  assert set(report["peaks"]["float32"]["flops_per_second"]) == {"jax", "torch"}
  assert report["meta"]["versions"]["torch"]


@pytest.mark.slow
def test_step_variants_each_run_in_their_own_process(tmp_path):
  """The attempts table: every variant must build and time the same step, none may fail."""
  from benchmarks import jax_step_variants
  jax_step_variants.main(["--model", "small_cnn", "--batch", "4", "--pgd_steps", "2",
                          "--warmup_steps", "1", "--timed_steps", "1",
                          "--variants", "shipped,rolled_attack_loop,no_donation",
                          "--output_dir", str(tmp_path)])
  report = json.loads((tmp_path / "variants_small_cnn_b4_k2_cpu.json").read_text())
  assert [row["variant"] for row in report["variants"]] == [
      "shipped", "rolled_attack_loop", "no_donation"]
  assert all("error" not in row and row["images_per_second"] > 0 for row in report["variants"])
  assert {row["block"] for row in report["building_blocks"]} == {
      "forward (eval)", "input gradient (eval)", "parameter gradient (train)"}


def test_time_window_syncs_once_around_the_timed_steps():
  """The window: one synchronisation before and one after the timed steps, none between."""
  events, now = [], [0.0]

  def step():
    events.append("step")
    now[0] += 2.0

  def synchronize():
    events.append("sync")

  timing = timing_lib.time_window(step, synchronize, warmup_steps=2, timed_steps=3,
                                  clock=lambda: now[0])
  assert events == ["step", "sync", "step", "sync", "step", "step", "step", "sync"]
  assert timing.first_seconds == 2.0 and timing.step_seconds == (2.0,)


def test_benchmark_flags_are_underscored_and_the_old_dashed_spellings_still_read(capsys):
  args = throughput.parse_args(["--model", "small_cnn", "--pgd-steps", "3", "--timed_steps=4"])
  assert (args.pgd_steps, args.timed_steps) == (3, 4)
  notice = capsys.readouterr().err
  assert "--pgd_steps (for --pgd-steps)" in notice and notice.count("\n") == 1


def test_the_attack_race_on_random_weights_attacks_every_example_on_both_sides(tmp_path):
  """torchattacks attacks only the examples a model gets right, act-jax every example; random
  labels would leave torchattacks about one in ten, so the random-weight workload is labelled
  with the model's own predictions and both sides start from 100% clean accuracy."""
  pytest.importorskip("torchattacks")
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.attack_throughput", "--workload=small_cnn",
       "--num_examples=4", "--batch_size=4", "--stages=apgd-ce", "--apgd_steps=2",
       f"--output_dir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, PYTHONPATH=REPO))
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((tmp_path / "attacks_small_cnn_n4_b4_cpu.json").read_text())
  row = report["rows"]["apgd-ce"]
  assert row["jax"]["clean"] == 1.0
  assert 0.0 <= row["jax"]["accuracy"] <= 1.0 and 0.0 <= row["torch"]["accuracy"] <= 1.0
  assert "100.00% correct clean" in (tmp_path / "attacks_small_cnn_n4_b4_cpu.md").read_text()
