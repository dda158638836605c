"""ACT step throughput: act_jax against the PyTorch baseline, in one run on one device.

    python -m benchmarks.throughput --model resnet18_cifar --batch 128 --pgd-steps 10

Each setting times the full ACT step (natural forward/backward, K-step PGD on the robust model,
robust forward/backward, both SGD updates) on synthetic data already on the device: the first
step apart (compilation), then the median of `--timed-steps` steps, each followed by a device
synchronisation. JAX runs the training code path (`act_jax.methods.act.train_step` under
shard_map in jit); PyTorch runs `benchmarks/torch_act.py`, whose step a parity test ties to
act_jax's.

FLOPs are counted, not measured: model FLOPs per image = (6 + 2K) x F, with F one forward pass by
XLA's cost analysis. Each model's training pass is forward + backward ~ 3 F; each attack step is
a forward pass and a gradient with respect to the input only ~ 2 F. MFU divides the achieved
FLOP/s by the peak of a large matmul measured in the same run, in the setting's dtype.

Writes `<output-dir>/<model>_b<batch>_k<K>_<platform>_<N>dev.json` and `.md` (N: the JAX
devices) and prints the table.
"""

import argparse
import dataclasses
import datetime
import os
import pathlib
import platform
import sys
from typing import Any

# JAX must not preallocate most of a GPU's memory: PyTorch shares the device in this run.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp

from act_jax import optimizers
from act_jax.methods.act import ACTHyperparams
from benchmarks import jax_act_step, matmul_peak, reports
from benchmarks.timing import Timing, time_calls
from benchmarks.workloads import WORKLOADS, Workload


@dataclasses.dataclass(frozen=True)
class Setting:
  framework: str  # "jax" or "torch"
  dtype: str  # "float32" or "bfloat16"
  compiled: bool = True  # torch: torch.compile; JAX is always compiled
  gpu_only: bool = False


SETTINGS = {
    "jax_f32": Setting("jax", "float32"),
    "jax_bf16": Setting("jax", "bfloat16"),
    "torch_eager_f32": Setting("torch", "float32", compiled=False),
    "torch_compile_f32": Setting("torch", "float32"),
    "torch_eager_bf16": Setting("torch", "bfloat16", compiled=False, gpu_only=True),
    "torch_compile_bf16": Setting("torch", "bfloat16", gpu_only=True),
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def step_flops_per_image(forward_flops: float, pgd_steps: int) -> float:
  """Model FLOPs of one ACT step per image: two training passes (3 F each) and K attack steps
  (2 F each: a forward pass and the input gradient; no weight gradients)."""
  return (6 + 2 * pgd_steps) * forward_flops


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", required=True, choices=sorted(WORKLOADS))
  parser.add_argument("--batch", type=int, default=128, help="global batch size (one device)")
  parser.add_argument("--pgd-steps", type=int, default=10, help="K, the training attack's steps")
  parser.add_argument("--settings", default=None,
                      help=f"comma-separated, from {', '.join(SETTINGS)}; default: all that the "
                      "device supports (bf16 PyTorch autocast only on CUDA)")
  parser.add_argument("--warmup-steps", type=int, default=2,
                      help="untimed steps, the first (compilation) included")
  parser.add_argument("--timed-steps", type=int, default=5)
  parser.add_argument("--jax-devices", type=int, default=None,
                      help="devices the JAX step is data-parallel over (default: 1 on GPU/TPU, "
                      "every CPU device on CPU; XLA_FLAGS=--xla_force_host_platform_device_count=N "
                      "makes N CPU devices, one per core is fastest)")
  parser.add_argument("--matmul-size", type=int, default=None,
                      help="side of the peak-FLOP/s matmul (default 2048 on CPU, 8192 on GPU)")
  parser.add_argument("--torch-threads", type=int, default=len(os.sched_getaffinity(0)),
                      help="torch.set_num_threads (XLA:CPU uses every core)")
  parser.add_argument("--f32-matmul", choices=("highest", "tf32"), default="highest",
                      help="float32 matmul/conv precision in both frameworks: full float32, or "
                      "TF32 on GPUs that have it")
  parser.add_argument("--output-dir", default=str(pathlib.Path(__file__).parent / "results"))
  args = parser.parse_args(argv)
  for name in ("batch", "warmup_steps", "timed_steps"):
    if getattr(args, name) < 1:
      parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
  if args.pgd_steps < 0:
    parser.error(f"--pgd-steps must be >= 0, got {args.pgd_steps}")
  on_gpu = jax.default_backend() == "gpu"
  available = jax.local_device_count()
  if args.jax_devices is None:
    args.jax_devices = available if jax.default_backend() == "cpu" else 1
  if not 1 <= args.jax_devices <= available:
    parser.error(f"--jax-devices must be in [1, {available}] (the local devices), got "
                 f"{args.jax_devices}")
  if args.batch % args.jax_devices:
    parser.error(f"--batch {args.batch} must be divisible by --jax-devices {args.jax_devices}")
  if args.settings is None:
    args.settings = [name for name, s in SETTINGS.items() if on_gpu or not s.gpu_only]
  else:
    args.settings = args.settings.split(",")
    unknown = [name for name in args.settings if name not in SETTINGS]
    if unknown:
      parser.error(f"unknown --settings {', '.join(unknown)}; allowed: {', '.join(SETTINGS)}")
    gpu_only = [name for name in args.settings if SETTINGS[name].gpu_only and not on_gpu]
    if gpu_only:
      parser.error(f"--settings {', '.join(gpu_only)} need a CUDA GPU (bf16 autocast)")
  return args


def torch_device():
  import torch  # optional dependency
  use_cuda = jax.default_backend() == "gpu" and torch.cuda.is_available()
  return torch.device("cuda" if use_cuda else "cpu")


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
  timing = time_calls(step.run, warmup_calls=args.warmup_steps, timed_calls=args.timed_steps)
  return {"timing": timing, "compile_seconds": step.compile_seconds,
          # The compiled step is per device: it sees batch / jax_devices images.
          "xla_step_flops_per_image": (None if step.xla_step_flops is None
                                       else step.xla_step_flops * args.jax_devices / args.batch)}


def time_torch(workload: Workload, setting: Setting, args: argparse.Namespace) -> dict[str, Any]:
  import torch

  from benchmarks import torch_act
  device = torch_device()
  config = workload.recipe()
  hp = dataclasses.replace(ACTHyperparams.from_config(config), num_steps=args.pgd_steps)
  torch.manual_seed(0)
  new_model = lambda: torch_act.build_model(workload.torch_model, num_classes=workload.num_classes,
                                            base_width=config.model.base_width)
  trainer = torch_act.TorchACT(
      new_model(), new_model(), hp,
      learning_rate=optimizers.peak_learning_rate(config.optim, args.batch),
      weight_decay=config.optim.weight_decay, momentum=config.optim.momentum, device=device,
      compile_models=setting.compiled, bf16=setting.dtype == "bfloat16",
      channels_last=device.type == "cuda")
  height, width, channels = workload.image_shape
  images = trainer.to_input(torch.rand(args.batch, channels, height, width, device=device))
  labels = torch.randint(0, workload.num_classes, (args.batch,), device=device)

  def run() -> None:
    trainer.step(images, labels)
    torch_act.synchronize(device)

  timing = time_calls(run, warmup_calls=args.warmup_steps, timed_calls=args.timed_steps)
  return {"timing": timing, "compile_seconds": None}


def configure_float32_precision(mode: str) -> None:
  """The same float32 matmul/conv precision in PyTorch as `jax.default_matmul_precision`."""
  import torch
  allow_tf32 = mode == "tf32"
  torch.backends.cuda.matmul.allow_tf32 = allow_tf32
  torch.backends.cudnn.allow_tf32 = allow_tf32


def measure_peaks(args: argparse.Namespace, dtypes: set[str], use_torch: bool) -> dict[str, dict]:
  """Per dtype: matmul FLOP/s by each framework, and the peak (the larger)."""
  size = args.matmul_size or (8192 if jax.default_backend() == "gpu" else 2048)
  peaks = {}
  for dtype in sorted(dtypes):
    precision = "highest" if args.f32_matmul == "highest" else "tensorfloat32"
    with jax.default_matmul_precision(precision):
      measured = {"jax": matmul_peak.jax_matmul_flops_per_second(size, DTYPES[dtype],
                                                                  jax.devices()[0])}
    if use_torch:
      import torch
      measured["torch"] = matmul_peak.torch_matmul_flops_per_second(
          size, getattr(torch, dtype), torch_device())
    peaks[dtype] = {"matmul_size": size, "flops_per_second": measured,
                    "peak_flops_per_second": max(measured.values())}
    print(f"matmul peak {dtype}: " + ", ".join(f"{k} {v / 1e12:.3f} TFLOP/s"
                                                for k, v in measured.items()), file=sys.stderr)
  return peaks


def device_description() -> str:
  device = jax.devices()[0]
  if device.platform != "cpu":
    return device.device_kind
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return f"{line.split(':', 1)[1].strip()}, {len(os.sched_getaffinity(0))} cores"
  except OSError:
    pass
  return f"{platform.processor() or 'CPU'}, {len(os.sched_getaffinity(0))} cores"


def summarise(name: str, setting: Setting, measured: dict[str, Any], flops_per_image: float,
              batch: int, peaks: dict[str, dict]) -> dict[str, Any]:
  timing: Timing = measured["timing"]
  images_per_second = batch / timing.median_seconds
  achieved = flops_per_image * images_per_second
  compile_seconds = measured["compile_seconds"]
  if compile_seconds is None:  # torch: compilation/autotuning happens inside the first step
    compile_seconds = max(timing.first_seconds - timing.median_seconds, 0.0)
  return {
      "setting": name, "framework": setting.framework, "dtype": setting.dtype,
      "torch_compile": setting.compiled if setting.framework == "torch" else None,
      "images_per_second": images_per_second, "median_step_seconds": timing.median_seconds,
      "step_seconds": list(timing.step_seconds), "spread": timing.spread,
      "first_step_seconds": timing.first_seconds, "compile_seconds": compile_seconds,
      "model_flops_per_second": achieved,
      "mfu": achieved / peaks[setting.dtype]["peak_flops_per_second"],
  }


def add_speedups(rows: list[dict[str, Any]]) -> None:
  """`jax_speedup` on each PyTorch row: JAX img/s in the same dtype over this row's."""
  jax_rows = {row["dtype"]: row for row in rows if row["framework"] == "jax" and "error" not in row}
  for row in rows:
    if row["framework"] == "torch" and "error" not in row and row["dtype"] in jax_rows:
      row["jax_speedup"] = jax_rows[row["dtype"]]["images_per_second"] / row["images_per_second"]


def three_digits(value: float) -> str:
  """333.33 -> "333.3", 0.6 -> "0.600": small throughputs keep three significant digits."""
  return f"{value:.1f}" if value >= 100 else f"{value:#.3g}"


def xla_cross_check(flops: dict[str, Any]) -> list[str]:
  """A line comparing the FLOP model with XLA's count of the whole step, where XLA has one."""
  xla = flops.get("xla_cost_analysis_step_flops_per_image")
  if not xla:
    return []
  return [f"XLA's cost analysis of the whole compiled step (attack loop unrolled): "
          f"{xla / 1e9:.3f} G per image ({100 * (xla / flops['step_flops_per_image'] - 1):+.1f}%)."]


def markdown_table(report: dict[str, Any]) -> str:
  header = ("| setting | img/s | step ms (median) | spread | compile s | TFLOP/s | MFU | "
            "JAX speed-up |\n|---|---|---|---|---|---|---|---|")
  lines = [header]
  for row in report["results"]:
    if "error" in row:
      lines.append(f"| {row['setting']} | failed: {row['error']} | | | | | | |")
      continue
    speedup = f"{row['jax_speedup']:.2f}x" if "jax_speedup" in row else "-"
    lines.append(
        f"| {row['setting']} | {three_digits(row['images_per_second'])} | "
        f"{1e3 * row['median_step_seconds']:.1f} | {100 * row['spread']:.0f}% | "
        f"{row['compile_seconds']:.1f} | {row['model_flops_per_second'] / 1e12:.3f} | "
        f"{100 * row['mfu']:.1f}% | {speedup} |")
  meta = report["meta"]
  peaks = "; ".join(f"{dtype} {p['peak_flops_per_second'] / 1e12:.3f} TFLOP/s"
                    for dtype, p in report["peaks"].items())
  return "\n".join([
      f"{meta['model']}, batch {meta['batch']}, PGD-{meta['pgd_steps']}, on {meta['device']} "
      f"(JAX data-parallel over {meta['jax_devices']} device(s); "
      f"jax {meta['versions']['jax']}, torch {meta['versions'].get('torch', '-')}), "
      f"{meta['date']}",
      "", *lines, "",
      f"Model FLOPs per image: {report['flops']['step_flops_per_image'] / 1e9:.3f} G "
      f"((6 + 2K) x forward {report['flops']['forward_flops_per_image'] / 1e9:.4f} G). "
      f"Measured matmul peak: {peaks}.", *xla_cross_check(report["flops"]),
      f"Command: `{meta['command']}`"])


def first_line(error: Exception) -> str:
  return (str(error).splitlines() or [""])[0][:200]


def release_torch_memory() -> None:
  """Returns PyTorch's cached GPU memory, which JAX shares in this run."""
  import torch
  if torch.cuda.is_available():
    torch.cuda.empty_cache()


def main(argv: list[str]) -> dict[str, Any]:
  args = parse_args(argv)
  workload = WORKLOADS[args.model]
  settings = {name: SETTINGS[name] for name in args.settings}
  use_torch = any(s.framework == "torch" for s in settings.values())
  versions = {"jax": jax.__version__, "python": platform.python_version()}
  if use_torch:
    try:
      import torch
    except ImportError:
      sys.exit("PyTorch settings were asked for but torch is not installed "
               "(pip install -e '.[torch]', or pass --settings=jax_f32,jax_bf16)")
    torch.set_num_threads(args.torch_threads)
    configure_float32_precision(args.f32_matmul)
    versions["torch"] = torch.__version__

  peaks = measure_peaks(args, {s.dtype for s in settings.values()}, use_torch)
  forward_flops = jax_act_step.forward_flops_per_image(workload, args.batch)
  flops_per_image = step_flops_per_image(forward_flops, args.pgd_steps)
  rows, xla_step_flops = [], None
  for name, setting in settings.items():
    print(f"timing {name} ...", file=sys.stderr, flush=True)
    try:
      measured = (time_jax if setting.framework == "jax" else time_torch)(workload, setting, args)
    except Exception as error:  # noqa: BLE001  (recorded in the report, not hidden)
      rows.append({"setting": name, "framework": setting.framework, "dtype": setting.dtype,
                   "error": f"{type(error).__name__}: {first_line(error)}"})
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
               "command": reports.command_line("benchmarks.throughput", argv)},
      "flops": {"forward_flops_per_image": forward_flops,
                "step_flops_per_image": flops_per_image,
                "method": "(6 + 2K) x forward FLOPs by XLA cost analysis",
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
  main(sys.argv[1:])
