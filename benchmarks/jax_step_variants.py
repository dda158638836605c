"""Speed-up attempts on the act_jax step, each timed against the step as it ships.

    python -m benchmarks.jax_step_variants --model resnet18_cifar --batch 32 --pgd_steps 10

Every variant computes the same step; they differ in how it is compiled or run:
- `shipped`: what `act_jax.train` runs on one device (attack loop unrolled on CPU, state
  donated);
- `rolled_attack_loop`: the attack as a rolled `fori_loop` (what GPUs and TPUs run);
- `no_donation`: the state is copied instead of updated in place;
- `device_per_core`: one XLA:CPU device per core, the batch split over them by the step's
  data parallelism (the same computation: BatchNorm statistics and gradients are all-reduced);
- `xla_*`: the shipped step under an XLA:CPU flag (oneDNN or XNNPACK convolutions, fast math).
Each variant runs in its own process, since XLA reads its flags once per process. A second
table times the step's building blocks in both frameworks (forward, input gradient for one
attack step, parameter gradient for one training pass) to show where the time goes.
Writes `<output_dir>/variants_<model>_b<batch>_k<K>_<platform>.{json,md}` (default output dir
workdirs/benchmarks).
"""

import argparse
import functools
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from act_jax import models
from benchmarks import jax_act_step, reports
from benchmarks.timing import time_calls
from benchmarks.workloads import WORKLOADS, Workload

XLA_FLAG_VARIANTS = {
    "xla_onednn_custom_call": "--xla_cpu_experimental_onednn_custom_call=true",
    "xla_xnn_convolution": "--xla_cpu_experimental_xnn_fusion_type=individual_convolution",
    "xla_fast_math": "--xla_cpu_enable_fast_math=true",
}
# One XLA:CPU device per core, the batch split over them by the step's own data parallelism.
CORES = len(os.sched_getaffinity(0))
DEVICE_PER_CORE_FLAG = f"--xla_force_host_platform_device_count={CORES}"
VARIANTS = ("shipped", "device_per_core", "rolled_attack_loop", "no_donation", *XLA_FLAG_VARIANTS)


def time_variant(args: argparse.Namespace) -> dict[str, Any]:
  """Compiles and times the variant's step; the two variants of how it is built pass their
  choice to `compile_act_step`, the others differ only in their process's XLA flags."""
  step = jax_act_step.compile_act_step(
      WORKLOADS[args.model], batch_size=args.batch, pgd_steps=args.pgd_steps,
      model_dtype=jnp.float32, devices=jax.local_devices(),
      unroll_attack=False if args.variant == "rolled_attack_loop" else None,
      donate_state=args.variant != "no_donation")
  timing = time_calls(step.run, warmup_calls=args.warmup_steps, timed_calls=args.timed_steps)
  return {"variant": args.variant, "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "compile_seconds": step.compile_seconds, "median_step_seconds": timing.median_seconds,
          "step_seconds": list(timing.step_seconds),
          "images_per_second": args.batch / timing.median_seconds}


def run_variant_in_subprocess(variant: str, args: argparse.Namespace) -> dict[str, Any]:
  env = dict(os.environ)
  flag = DEVICE_PER_CORE_FLAG if variant == "device_per_core" else XLA_FLAG_VARIANTS.get(variant)
  if flag:
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
  command = [sys.executable, "-m", "benchmarks.jax_step_variants", "--model", args.model,
             "--batch", str(args.batch),
             "--pgd_steps", str(args.pgd_steps), "--warmup_steps", str(args.warmup_steps),
             "--timed_steps", str(args.timed_steps), "--variant", variant]
  result = subprocess.run(command, env=env, capture_output=True, text=True, check=False,
                          cwd=pathlib.Path(__file__).resolve().parents[1])
  if result.returncode != 0:
    return {"variant": variant, "error": result.stderr.strip().splitlines()[-1][:300]}
  return json.loads(result.stdout.strip().splitlines()[-1])


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))


def jax_building_blocks(workload: Workload, batch: int) -> dict[str, Callable[[], None]]:
  model = models.from_config(workload.recipe(), workload.num_classes)
  images = jax.random.uniform(jax.random.PRNGKey(0), (batch, *workload.image_shape))
  labels = jnp.zeros((batch,), jnp.int32)
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(1), images)
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  input_gradient = jax.jit(jax.grad(
      lambda x, v: cross_entropy(model.apply(v, x, train=False), labels)))

  def train_loss(params, batch_stats, x):
    logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                            mutable=["batch_stats"])
    return cross_entropy(logits, labels)

  param_gradient = jax.jit(jax.grad(train_loss))
  params, batch_stats = variables["params"], variables["batch_stats"]
  return {
      "forward (eval)": lambda: jax.block_until_ready(forward(variables, images)),
      "input gradient (eval)": lambda: jax.block_until_ready(input_gradient(images, variables)),
      "parameter gradient (train)": lambda: jax.block_until_ready(
          param_gradient(params, batch_stats, images)),
  }


def torch_building_blocks(workload: Workload, batch: int) -> dict[str, Callable[[], None]]:
  import torch
  import torch.nn.functional as F

  from act_jax.pytorch import models as torch_models
  model = torch_models.build_model(workload.torch_model, num_classes=workload.num_classes,
                                   base_width=workload.recipe().model.base_width)
  height, width, channels = workload.image_shape
  images = torch.rand(batch, channels, height, width)
  labels = torch.zeros(batch, dtype=torch.long)

  def forward():
    model.eval()
    with torch.no_grad():
      model(images)

  def input_gradient():
    model.eval()
    inputs = images.clone().requires_grad_(True)
    torch.autograd.grad(F.cross_entropy(model(inputs), labels), inputs)

  def param_gradient():
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), labels).backward()

  return {"forward (eval)": forward, "input gradient (eval)": input_gradient,
          "parameter gradient (train)": param_gradient}


def time_building_blocks(args: argparse.Namespace) -> list[dict[str, Any]]:
  workload = WORKLOADS[args.model]
  frameworks = {"jax": jax_building_blocks(workload, args.batch)}
  try:
    import torch
    torch.set_num_threads(CORES)
    frameworks["torch"] = torch_building_blocks(workload, args.batch)
  except ImportError:
    pass
  rows = []
  for block in frameworks["jax"]:
    row = {"block": block}
    for framework, blocks in frameworks.items():
      row[f"{framework}_seconds"] = time_calls(blocks[block], warmup_calls=2,
                                               timed_calls=5).median_seconds
    rows.append(row)
  return rows


def markdown(report: dict[str, Any]) -> str:
  baseline = next((r for r in report["variants"] if r["variant"] == "shipped" and "error" not in r),
                  None)
  lines = ["| variant | img/s | step s (median) | compile s | vs shipped |",
           "|---|---|---|---|---|"]
  for row in report["variants"]:
    if "error" in row:
      lines.append(f"| {row['variant']} | failed: {row['error']} | | | |")
      continue
    ratio = (f"{row['images_per_second'] / baseline['images_per_second']:.2f}x"
             if baseline else "-")
    lines.append(f"| {row['variant']} | {row['images_per_second']:.2f} | "
                 f"{row['median_step_seconds']:.3g} | {row['compile_seconds']:.1f} | {ratio} |")
  lines += ["", "| building block | JAX s | PyTorch s | JAX / PyTorch time |", "|---|---|---|---|"]
  for row in report["building_blocks"]:
    torch_seconds = row.get("torch_seconds")
    lines.append(f"| {row['block']} | {row['jax_seconds']:.3f} | "
                 + (f"{torch_seconds:.3f} | {row['jax_seconds'] / torch_seconds:.2f} |"
                    if torch_seconds else "- | - |"))
  meta = report["meta"]
  return "\n".join([f"{meta['model']}, batch {meta['batch']}, PGD-{meta['pgd_steps']}, "
                    f"jax {meta['jax']}, float32, {meta['cores']} core(s)", "", *lines, "",
                    f"Command: `{meta['command']}`"])


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", required=True, choices=sorted(WORKLOADS))
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--pgd_steps", type=int, default=10)
  parser.add_argument("--warmup_steps", type=int, default=2)
  parser.add_argument("--timed_steps", type=int, default=3)
  parser.add_argument("--variants", default=",".join(VARIANTS),
                      help=f"comma-separated, from {', '.join(VARIANTS)}")
  parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one, in-process
  parser.add_argument("--output_dir", default=reports.DEFAULT_OUTPUT_DIR,
                      help=reports.OUTPUT_DIR_HELP)
  args = reports.parse_flags(parser, argv)
  if args.variant:
    print(json.dumps(time_variant(args)))
    return
  variants = args.variants.split(",")
  unknown = [v for v in variants if v not in VARIANTS]
  if unknown:
    parser.error(f"unknown --variants {', '.join(unknown)}; allowed: {', '.join(VARIANTS)}")
  rows = []
  for variant in variants:
    print(f"timing {variant} ...", file=sys.stderr, flush=True)
    rows.append(run_variant_in_subprocess(variant, args))
  report = {"meta": {"model": args.model, "batch": args.batch, "pgd_steps": args.pgd_steps,
                     "jax": jax.__version__, "backend": jax.default_backend(),
                     "command": reports.command_line("benchmarks.jax_step_variants", argv),
                     "cores": CORES},
            "variants": rows, "building_blocks": time_building_blocks(args)}
  table = markdown(report)
  reports.write_report(args.output_dir, f"variants_{args.model}_b{args.batch}_k{args.pgd_steps}_"
                       f"{jax.default_backend()}", report, table)
  print(table)


if __name__ == "__main__":
  main(sys.argv[1:])
