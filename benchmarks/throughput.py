"""ACT step throughput: act_jax against the best PyTorch, in one run on one machine.

    python -m benchmarks.throughput --model resnet18_cifar --batch 128 --pgd_steps 10

Each setting times the full ACT step (natural forward/backward, K-step PGD on the robust model,
robust forward/backward, both SGD updates) on synthetic data already on the device. JAX runs
the training code path (`act_jax.methods.act.train_step` under shard_map in jit); PyTorch runs
`act_jax/pytorch/`, whose step a parity test ties to act_jax's, as a PyTorch user would
run it fastest: eager, the whole step under `torch.compile`, or (on CUDA) the whole step
captured in one CUDA graph, with `cudnn.benchmark` on.

Two timings per setting, after the first step (compilation, autotuning, capture) apart:
`--timed_steps` steps between two synchronisations, as training runs them (the headline img/s),
and the median of the same number of steps synchronised one by one (each step's launch latency
exposed). The speed-up compares JAX with the fastest PyTorch setting of the same dtype.

FLOPs are counted, not measured: a step's model FLOPs per image are (6 + 2K) x F, F one forward
pass counted from the program's convolutions and matrix products (`benchmarks/flops.py`, the
same on every backend). MFU divides the achieved FLOP/s by the peak of a large matmul measured
in the same run, in the setting's dtype (JAX's: one matmul on each of the step's devices at once).

On CPU the command gives XLA one device per core, as training does (`XLA_FLAGS=
--xla_force_host_platform_device_count=N` or `JAX_NUM_CPU_DEVICES=N` chooses another count), and
the JAX step is data-parallel over them: one device per core ran ResNet-18 1.27x faster on 2
cores (benchmarks/RESULTS.md). Writes `<output_dir>/<model>_b<batch>_k<K>_<platform>_<N>dev.json`
and `.md` (N: the JAX devices; default output dir workdirs/benchmarks) and prints the table.
"""

import argparse
import dataclasses
import datetime
import os
import platform
import sys
from typing import Any

# JAX must not preallocate most of a GPU's memory: PyTorch shares the device in this run.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp

from act_jax import methods, optimizers, parallel, provenance
from benchmarks import jax_act_step, matmul_peak, reports
from benchmarks.timing import Timing, time_calls, time_window
from benchmarks.workloads import WORKLOADS, Workload


@dataclasses.dataclass(frozen=True)
class Setting:
  framework: str  # "jax" or "torch"
  dtype: str  # "float32" or "bfloat16"
  mode: str = "xla"  # torch: "eager", "compile" (the whole step) or "graph" (one CUDA graph)
  cuda_only: str | None = None  # why the setting needs CUDA, if it does


_BF16 = "bf16 autocast is CUDA-only"
_GRAPH = "CUDA graphs need a CUDA device"
SETTINGS = {
    "jax_f32": Setting("jax", "float32"),
    "jax_bf16": Setting("jax", "bfloat16"),
    "torch_eager_f32": Setting("torch", "float32", "eager"),
    "torch_compile_f32": Setting("torch", "float32", "compile"),
    "torch_graph_f32": Setting("torch", "float32", "graph", _GRAPH),
    "torch_eager_bf16": Setting("torch", "bfloat16", "eager", _BF16),
    "torch_compile_bf16": Setting("torch", "bfloat16", "compile", _BF16),
    "torch_graph_bf16": Setting("torch", "bfloat16", "graph", _BF16),
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def step_flops_per_image(forward_flops: float, pgd_steps: int) -> float:
  """Model FLOPs of one ACT step per image: two training passes (3 F each) and K attack steps
  (2 F each: a forward pass and the input gradient; no weight gradients)."""
  return methods.get("act").forward_passes(pgd_steps) * forward_flops


def on_cuda() -> bool:
  return jax.default_backend() == "gpu"


def parse_args(argv: list[str], *, device_per_core: bool = False) -> argparse.Namespace:
  """The checked flags. `device_per_core` gives XLA:CPU one device per core first (the command
  line does; a test in a process whose JAX has started cannot)."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", required=True, choices=sorted(WORKLOADS))
  parser.add_argument("--batch", type=int, default=128, help="global batch size (one device)")
  parser.add_argument("--pgd_steps", type=int, default=10, help="K, the training attack's steps")
  parser.add_argument("--settings", default=None,
                      help=f"comma-separated, from {', '.join(SETTINGS)}; default: all (those "
                      "that need CUDA are skipped elsewhere, with the reason in the report)")
  parser.add_argument("--warmup_steps", type=int, default=2,
                      help="untimed steps, the first (compilation) included")
  parser.add_argument("--timed_steps", type=int, default=5)
  parser.add_argument("--jax_devices", type=int, default=None,
                      help="devices the JAX step is data-parallel over (default: 1 on GPU/TPU, "
                      "every CPU device on CPU: one per core, unless XLA_FLAGS="
                      "--xla_force_host_platform_device_count=N or JAX_NUM_CPU_DEVICES=N makes N)")
  parser.add_argument("--matmul_size", type=int, default=None,
                      help="side of the peak-FLOP/s matmul (default 2048 on CPU, 8192 on GPU)")
  parser.add_argument("--torch_threads", type=int, default=len(os.sched_getaffinity(0)),
                      help="torch.set_num_threads (XLA:CPU uses every core)")
  parser.add_argument("--f32_matmul", choices=("highest", "tf32"), default="highest",
                      help="float32 matmul/conv precision in both frameworks: full float32, or "
                      "TF32 on GPUs that have it")
  parser.add_argument("--output_dir", default=reports.DEFAULT_OUTPUT_DIR,
                      help=reports.OUTPUT_DIR_HELP)
  args = reports.parse_flags(parser, argv)
  for name in ("batch", "warmup_steps", "timed_steps"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
  if args.pgd_steps < 0:
    parser.error(f"--pgd_steps must be >= 0, got {args.pgd_steps}")
  if device_per_core:
    parallel.use_one_cpu_device_per_core([args.batch])
  available = jax.local_device_count()
  if args.jax_devices is None:
    args.jax_devices = available if jax.default_backend() == "cpu" else 1
  if not 1 <= args.jax_devices <= available:
    parser.error(f"--jax_devices must be in [1, {available}] (the local devices), got "
                 f"{args.jax_devices}")
  if args.batch % args.jax_devices:
    parser.error(f"--batch {args.batch} must be divisible by --jax_devices {args.jax_devices}")
  args.settings = list(SETTINGS) if args.settings is None else args.settings.split(",")
  unknown = [name for name in args.settings if name not in SETTINGS]
  if unknown:
    parser.error(f"unknown --settings {', '.join(unknown)}; allowed: {', '.join(SETTINGS)}")
  return args


def torch_device():
  import torch  # optional dependency
  return torch.device("cuda" if on_cuda() and torch.cuda.is_available() else "cpu")


def time_jax(workload: Workload, setting: Setting, args: argparse.Namespace) -> dict[str, Any]:
  # The precision setting concerns float32 operands only; bf16 settings keep XLA's default.
  if setting.dtype != "float32":
    precision = "default"
  else:
    precision = "tensorfloat32" if args.f32_matmul == "tf32" else "highest"
  with jax.default_matmul_precision(precision):
    step = jax_act_step.compile_act_step(workload, batch_size=args.batch,
                                         pgd_steps=args.pgd_steps,
                                         model_dtype=DTYPES[setting.dtype],
                                         devices=jax.local_devices()[:args.jax_devices])
  return {"window": time_window(step.step, step.synchronize, warmup_steps=args.warmup_steps,
                                timed_steps=args.timed_steps),
          "per_step": time_calls(step.run, warmup_calls=1, timed_calls=args.timed_steps),
          "compile_seconds": step.compile_seconds,
          # The compiled step is per device: it sees batch / jax_devices images.
          "xla_step_flops_per_image": (None if step.xla_step_flops is None
                                       else step.xla_step_flops * args.jax_devices / args.batch)}


def time_torch(workload: Workload, setting: Setting, args: argparse.Namespace) -> dict[str, Any]:
  import torch

  from act_jax.pytorch import act_step as torch_act_step
  from act_jax.pytorch import models as torch_models
  device = torch_device()
  config = workload.recipe()
  config.attack.num_steps = args.pgd_steps
  hp = methods.get("act").build_hyperparams(config, unroll_attack=False)
  torch.manual_seed(0)
  new_model = lambda: torch_models.build_model(
      workload.torch_model, num_classes=workload.num_classes, base_width=config.model.base_width)
  trainer = torch_act_step.TorchACT(
      new_model(), new_model(), hp,
      learning_rate=optimizers.peak_learning_rate(config.optim, args.batch),
      weight_decay=config.optim.weight_decay, momentum=config.optim.momentum, device=device,
      bf16=setting.dtype == "bfloat16", channels_last=device.type == "cuda",
      autocast_cache=setting.mode != "graph")
  height, width, channels = workload.image_shape
  images = trainer.to_input(torch.rand(args.batch, channels, height, width, device=device))
  labels = torch.randint(0, workload.num_classes, (args.batch,), device=device)
  if setting.mode == "graph":
    step = torch_act_step.capture_step_graph(trainer, images, labels)
  else:
    run_step = torch_act_step.compiled_step(trainer) if setting.mode == "compile" else trainer.step
    step = lambda: run_step(images, labels)
  synchronize = lambda: torch_act_step.synchronize(device)
  return {"window": time_window(step, synchronize, warmup_steps=args.warmup_steps,
                                timed_steps=args.timed_steps),
          "per_step": time_calls(lambda: (step(), synchronize()), warmup_calls=1,
                                 timed_calls=args.timed_steps),
          "compile_seconds": None}


def configure_torch(mode: str) -> None:
  """PyTorch as a user tunes it: cuDNN autotuning on, float32 precision as for JAX."""
  import torch
  torch.backends.cudnn.benchmark = True
  allow_tf32 = mode == "tf32"
  torch.backends.cuda.matmul.allow_tf32 = allow_tf32
  torch.backends.cudnn.allow_tf32 = allow_tf32


def measure_peaks(args: argparse.Namespace, dtypes: set[str], use_torch: bool) -> dict[str, dict]:
  """Per dtype: matmul FLOP/s by each framework, and the peak (the larger)."""
  size = args.matmul_size or (8192 if on_cuda() else 2048)
  peaks = {}
  for dtype in sorted(dtypes):
    precision = "highest" if args.f32_matmul == "highest" else "tensorfloat32"
    with jax.default_matmul_precision(precision):
      measured = {"jax": matmul_peak.jax_matmul_flops_per_second(
          size, DTYPES[dtype], jax.local_devices()[:args.jax_devices])}
    if use_torch and (dtype == "float32" or torch_device().type == "cuda"):
      import torch
      measured["torch"] = matmul_peak.torch_matmul_flops_per_second(
          size, getattr(torch, dtype), torch_device())
    peaks[dtype] = {"matmul_size": size, "flops_per_second": measured,
                    "peak_flops_per_second": max(measured.values())}
    print(f"matmul peak {dtype}: " + ", ".join(f"{k} {v / 1e12:.3f} TFLOP/s"
                                                for k, v in measured.items()), file=sys.stderr)
  return peaks


def device_description() -> str:
  """The device kind, or on CPU the host's model and cores: "AMD EPYC 7B13, 2 cores"."""
  device = jax.devices()[0]
  if device.platform != "cpu":
    return device.device_kind
  return f"{provenance.cpu_model()}, {provenance.host_cores()} cores"


def summarise(name: str, setting: Setting, measured: dict[str, Any], flops_per_image: float,
              batch: int, peaks: dict[str, dict]) -> dict[str, Any]:
  window: Timing = measured["window"]
  per_step: Timing = measured["per_step"]
  images_per_second = batch / window.median_seconds
  achieved = flops_per_image * images_per_second
  compile_seconds = measured["compile_seconds"]
  if compile_seconds is None:  # torch: compilation, autotuning, capture happen in the first step
    compile_seconds = max(window.first_seconds - window.median_seconds, 0.0)
  return {
      "setting": name, "framework": setting.framework, "dtype": setting.dtype,
      "mode": setting.mode, "images_per_second": images_per_second,
      "step_seconds": window.median_seconds,
      "per_step_images_per_second": batch / per_step.median_seconds,
      "per_step_seconds": list(per_step.step_seconds), "per_step_spread": per_step.spread,
      "first_step_seconds": window.first_seconds, "compile_seconds": compile_seconds,
      "model_flops_per_second": achieved,
      "mfu": achieved / peaks[setting.dtype]["peak_flops_per_second"],
  }


def add_speedups(rows: list[dict[str, Any]]) -> None:
  """On each PyTorch row, `jax_speedup` (JAX img/s in the same dtype over this row's); on each
  JAX row, `speedup_over_best_torch` against the fastest PyTorch setting of its dtype."""
  timed = [row for row in rows if "images_per_second" in row]
  jax_rows = {row["dtype"]: row for row in timed if row["framework"] == "jax"}
  for row in timed:
    if row["framework"] == "torch" and row["dtype"] in jax_rows:
      row["jax_speedup"] = jax_rows[row["dtype"]]["images_per_second"] / row["images_per_second"]
  for dtype, jax_row in jax_rows.items():
    torch_rows = [r for r in timed if r["framework"] == "torch" and r["dtype"] == dtype]
    if torch_rows:
      best = max(torch_rows, key=lambda r: r["images_per_second"])
      jax_row["best_torch"] = best["setting"]
      jax_row["speedup_over_best_torch"] = (jax_row["images_per_second"]
                                            / best["images_per_second"])


def three_digits(value: float) -> str:
  """333.33 -> "333.3", 0.6 -> "0.600": small throughputs keep three significant digits."""
  return f"{value:.1f}" if value >= 100 else f"{value:#.3g}"


def xla_cross_check(flops: dict[str, Any]) -> list[str]:
  """A line comparing the FLOP model with XLA's count of the whole step, where XLA has one."""
  xla = flops.get("xla_cost_analysis_step_flops_per_image")
  if not xla:
    return []
  return [f"XLA:CPU's cost analysis of the whole compiled step (attack loop unrolled): "
          f"{xla / 1e9:.3f} G per image ({100 * (xla / flops['step_flops_per_image'] - 1):+.1f}%; "
          "it leaves out the kernel taps that fall on padding)."]


def speedup_cell(row: dict[str, Any]) -> str:
  if "speedup_over_best_torch" in row:
    return f"{row['speedup_over_best_torch']:.2f}x over {row['best_torch']}"
  return f"{row['jax_speedup']:.2f}x" if "jax_speedup" in row else "-"


def markdown_table(report: dict[str, Any]) -> str:
  header = ("| setting | img/s | img/s, each step synced | compile s | TFLOP/s | MFU | "
            "JAX speed-up |\n|---|---|---|---|---|---|---|")
  lines = [header]
  for row in report["results"]:
    if "skipped" in row or "error" in row:
      why = f"skipped: {row['skipped']}" if "skipped" in row else f"failed: {row['error']}"
      lines.append(f"| {row['setting']} | {why} | | | | | |")
      continue
    lines.append(
        f"| {row['setting']} | {three_digits(row['images_per_second'])} | "
        f"{three_digits(row['per_step_images_per_second'])} | "
        f"{row['compile_seconds']:.1f} | {row['model_flops_per_second'] / 1e12:.3f} | "
        f"{100 * row['mfu']:.1f}% | {speedup_cell(row)} |")
  meta = report["meta"]
  peaks = "; ".join(f"{dtype} {p['peak_flops_per_second'] / 1e12:.3f} TFLOP/s"
                    for dtype, p in report["peaks"].items())
  return "\n".join([
      f"{meta['model']}, batch {meta['batch']}, PGD-{meta['pgd_steps']}, on {meta['device']} "
      f"(JAX data-parallel over {meta['jax_devices']} device(s); "
      f"jax {meta['versions']['jax']}, torch {meta['versions'].get('torch', '-')}), "
      f"{meta['date']}",
      "", *lines, "",
      f"img/s: {meta['timed_steps']} steps between two synchronisations, as training runs; "
      "the next column syncs after every step (median).",
      f"Model FLOPs per image: {report['flops']['step_flops_per_image'] / 1e9:.3f} G "
      f"((6 + 2K) x forward {report['flops']['forward_flops_per_image'] / 1e9:.4f} G, counted "
      f"from the program). Measured matmul peak: {peaks}.", *xla_cross_check(report["flops"]),
      f"Command: `{meta['command']}`"])


def first_line(error: Exception) -> str:
  return (str(error).splitlines() or [""])[0][:200]


def release_torch_memory() -> None:
  """Returns PyTorch's cached GPU memory, which JAX shares in this run."""
  import torch
  if torch.cuda.is_available():
    torch.cuda.empty_cache()


def main(argv: list[str], *, device_per_core: bool = False) -> dict[str, Any]:
  command = reports.command_line("benchmarks.throughput", argv)  # the user's XLA_FLAGS
  args = parse_args(argv, device_per_core=device_per_core)
  workload = WORKLOADS[args.model]
  settings = {name: SETTINGS[name] for name in args.settings}
  runnable = {name: s for name, s in settings.items() if on_cuda() or not s.cuda_only}
  use_torch = any(s.framework == "torch" for s in runnable.values())
  versions = {"jax": jax.__version__, "python": platform.python_version()}
  if use_torch:
    try:
      import torch
    except ImportError:
      sys.exit("PyTorch settings were asked for but torch is not installed "
               "(pip install -e '.[torch]', or pass --settings=jax_f32,jax_bf16)")
    torch.set_num_threads(args.torch_threads)
    configure_torch(args.f32_matmul)
    versions["torch"] = torch.__version__

  peaks = measure_peaks(args, {s.dtype for s in runnable.values()}, use_torch)
  forward_flops = jax_act_step.forward_flops_per_image(workload)
  flops_per_image = step_flops_per_image(forward_flops, args.pgd_steps)
  rows, xla_step_flops = [], None
  for name, setting in settings.items():
    base = {"setting": name, "framework": setting.framework, "dtype": setting.dtype,
            "mode": setting.mode}
    if name not in runnable:
      rows.append({**base, "skipped": setting.cuda_only})
      continue
    print(f"timing {name} ...", file=sys.stderr, flush=True)
    try:
      measured = (time_jax if setting.framework == "jax" else time_torch)(workload, setting, args)
    except Exception as error:  # noqa: BLE001  (recorded in the report, not hidden)
      rows.append({**base, "error": f"{type(error).__name__}: {first_line(error)}"})
      print(f"  {name} failed: {rows[-1]['error']}", file=sys.stderr)
      continue
    if setting.framework == "torch":
      release_torch_memory()
    xla_step_flops = measured.get("xla_step_flops_per_image") or xla_step_flops
    rows.append(summarise(name, setting, measured, flops_per_image, args.batch, peaks))
    print(f"  {rows[-1]['images_per_second']:.1f} img/s", file=sys.stderr, flush=True)
  add_speedups(rows)

  report = {
      "meta": {"model": args.model, "batch": args.batch, "pgd_steps": args.pgd_steps,
               "device": device_description(), "backend": jax.default_backend(),
               "jax_devices": args.jax_devices,
               "versions": versions, "torch_threads": args.torch_threads if use_torch else None,
               "f32_matmul": args.f32_matmul, "timed_steps": args.timed_steps,
               "warmup_steps": args.warmup_steps,
               "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
               "command": command},
      "flops": {"forward_flops_per_image": forward_flops,
                "step_flops_per_image": flops_per_image,
                "method": "(6 + 2K) x forward FLOPs counted from the program "
                          "(benchmarks/flops.py)",
                "xla_cost_analysis_step_flops_per_image": xla_step_flops},
      "peaks": peaks, "results": rows}
  table = markdown_table(report)
  stem = reports.write_report(
      args.output_dir, f"{args.model}_b{args.batch}_k{args.pgd_steps}_{jax.default_backend()}"
      f"_{args.jax_devices}dev", report, table)
  print(table)
  print(f"\nwrote {stem}.json and {stem}.md", file=sys.stderr)
  return report


if __name__ == "__main__":
  main(sys.argv[1:], device_per_core=True)
