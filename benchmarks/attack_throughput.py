"""A race: the standard AutoAttack in JAX (act-jax) against the same attacks in PyTorch.

    python -m benchmarks.attack_throughput --workdir=RUN --model=robust --num_examples=200
    python -m benchmarks.attack_throughput --workload=resnet18_cifar --num_examples=16 \
        --square_queries=100

Same model (the run's, converted to `act_jax.pytorch.models` with the converter that
`python -m act_jax.export` uses; or, with `--workload`, random weights on random images), same
examples, same eps. For each of AutoAttack's four attacks it times act-jax's evaluator and
torchattacks 3.5.1 (built with the original's settings, `benchmarks.torch_autoattack`) on every
example, and then the whole cascade, where each attack runs only on the examples still robust.
JAX's first call (compiling included) is timed apart from a second, compiled call; a user waits
for the first. Reports images per second, accuracies side by side, and the whole command's wall
time; writes `attacks_<architecture>_n<examples>_b<batch>_<platform>.json` and `.md` to
`--output_dir` (default workdirs/benchmarks).

A random-weight model is no robustness benchmark (nearly nothing survives the first attack), so
for `--workload` the cascade is skipped and each attack's speed is what is measured; its images
are labelled with its own predictions, so that both frameworks attack every example.
torchattacks attacks only the examples the model classifies correctly, act-jax every example of
a batch (its shapes are fixed), so on a trained model the per-attack rows give act-jax the
larger share of work; the report gives the clean accuracy beside them.
"""

import argparse
import dataclasses
import functools
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks import reports, torch_autoattack
from benchmarks.workloads import WORKLOADS


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.attack_throughput",
                                   description=__doc__.split("\n\n")[0])
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--workdir", help="an act_jax run whose model is attacked")
  source.add_argument("--workload", choices=sorted(WORKLOADS),
                      help="random weights and random images of this architecture instead")
  parser.add_argument("--model", default=None,
                      help="which model of the run (default: its robust model where it has one)")
  parser.add_argument("--num_examples", type=int, default=200,
                      help="the first N test examples (random images for --workload)")
  parser.add_argument("--batch_size", type=int, default=100, help="per call, both frameworks")
  parser.add_argument("--eps", type=float, default=None,
                      help="L-inf radius (default: the run's eval.eps; 8/255 for --workload)")
  parser.add_argument("--stages", default=",".join(torch_autoattack.STAGES),
                      help="which of AutoAttack's attacks to time one by one")
  parser.add_argument("--apgd_steps", type=int, default=100)
  parser.add_argument("--fab_steps", type=int, default=100)
  parser.add_argument("--square_queries", type=int, default=5000)
  parser.add_argument("--no_cascade", action="store_true", help="skip the whole cascade")
  parser.add_argument("--output_dir", default=reports.DEFAULT_OUTPUT_DIR,
                      help=reports.OUTPUT_DIR_HELP)
  args = reports.parse_flags(parser, argv)
  stages = [s.strip() for s in args.stages.split(",") if s.strip()]
  unknown = [s for s in stages if s not in torch_autoattack.STAGES]
  if unknown or not stages:
    parser.error(f"--stages={args.stages}: allowed: {', '.join(torch_autoattack.STAGES)}")
  args.stages = stages
  for flag in ("num_examples", "batch_size", "apgd_steps", "fab_steps", "square_queries"):
    if getattr(args, flag) < 1:
      parser.error(f"--{flag}={getattr(args, flag)}: must be >= 1")
  return args


@dataclasses.dataclass
class Problem:
  """The model in both frameworks and the examples: what both sides attack."""
  name: str
  apply_fn: Callable[..., Any]
  variables: dict[str, Any]
  torch_model: Any
  images: np.ndarray  # NHWC float32 in [0, 1]
  labels: np.ndarray
  eps: float
  num_classes: int
  architecture: str  # names the report's files


def _torch_model(architecture: str, base_width: int | None, variables: dict[str, Any],
                 image_shape: tuple[int, int, int], num_classes: int) -> Any:
  from act_jax import export
  from act_jax.pytorch import models as torch_models
  arguments = export.torch_arguments(architecture, num_classes=num_classes,
                                     base_width=base_width, image_shape=image_shape)
  model = torch_models.build_model(architecture, **arguments)
  torch_models.load_flax_variables(model, variables["params"], variables.get("batch_stats", {}))
  return model.eval()


def load_problem(args: argparse.Namespace) -> Problem:
  import jax
  import jax.numpy as jnp

  from act_jax import api, models
  from act_jax.data import datasets
  from act_jax.train_state import eval_mode_apply
  if args.workdir:
    run = api.load_run(args.workdir)
    which = args.model or run.method.default_model
    variables = jax.device_get(run.models[which].variables)
    split = datasets.in_memory_split(run.config.dataset, "test")
    images = np.asarray(split.images[:args.num_examples], np.float32)
    if images.ndim == 3:
      images = images[..., None]
    if images.max() > 1.0:
      images = images / 255.0
    labels = np.asarray(split.labels[:args.num_examples], np.int32)
    eps = run.config.eval.eps if args.eps is None else args.eps
    num_classes = run.info.num_classes
    torch_model = _torch_model(run.config.model.name, run.config.model.base_width, variables,
                               images.shape[1:], num_classes)
    return Problem(f"{args.workdir} ({which})", eval_mode_apply(run.model.apply), variables,
                   torch_model, images, labels, eps, num_classes, run.config.model.name)
  workload = WORKLOADS[args.workload]
  model = models.build_model(workload.model, num_classes=workload.num_classes)
  shape = (args.num_examples, *workload.image_shape)
  images = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), shape), np.float32)
  variables = jax.device_get(model.init(jax.random.PRNGKey(0), images[:1], train=False))
  # Labelled with the model's own predictions: torchattacks attacks only the examples a model
  # classifies correctly, act-jax every example of a batch, so with random labels torchattacks
  # would attack about one in ten and the race would compare unlike work.
  labels = np.asarray(jnp.argmax(eval_mode_apply(model.apply)(variables, images), -1), np.int32)
  torch_model = _torch_model(workload.model, None, variables, workload.image_shape,
                             workload.num_classes)
  return Problem(f"{args.workload} (random weights)", eval_mode_apply(model.apply), variables,
                 torch_model, images, labels, 8 / 255 if args.eps is None else args.eps,
                 workload.num_classes, args.workload)


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
  start = time.perf_counter()
  value = call()
  return value, time.perf_counter() - start


def jax_side(problem: Problem, args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
  """act-jax's evaluator: per attack (every example) and for the cascade."""
  import jax

  from act_jax import parallel
  from act_jax.attacks import specs
  from act_jax.data import datasets, pipeline
  from act_jax.evaluate.evaluator import Evaluator
  mesh = parallel.make_mesh()
  settings = specs.AttackSettings(eps=problem.eps, apgd_steps=args.apgd_steps,
                                  fab_steps=args.fab_steps, square_queries=args.square_queries,
                                  unroll=parallel.unrolls_attack_loops(mesh))
  data = pipeline.in_memory_eval_data(datasets.Split(problem.images, problem.labels),
                                      per_process_batch_size=args.batch_size)
  variables = {"model": parallel.replicate(problem.variables, mesh)}
  rng = jax.random.PRNGKey(0)
  results = {}
  for name in names:
    evaluator = Evaluator(problem.apply_fn, mesh, specs.parse_names(name), settings)
    run = functools.partial(evaluator, variables, data, rng)
    first, first_seconds = _timed(run)
    second, seconds = _timed(run)
    assert first.accuracy == second.accuracy  # the same keys give the same attack
    results[name] = {"accuracy": second.accuracy["model"][name],
                     "clean": second.accuracy["model"]["clean"],
                     "first_call_seconds": first_seconds, "seconds": seconds,
                     "compile_seconds": max(first_seconds - seconds, 0.0),
                     "stages": second.stages.get("model", {}).get(name)}
  return results


def torch_side(problem: Problem, args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
  """torchattacks with the original's settings, in batches of --batch_size."""
  import torch
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  attacks = torch_autoattack.standard_attacks(
      problem.torch_model, eps=problem.eps, num_classes=problem.num_classes,
      apgd_steps=args.apgd_steps, fab_steps=args.fab_steps,
      square_queries=args.square_queries)
  images = torch.from_numpy(problem.images.transpose(0, 3, 1, 2).copy())
  labels = torch.from_numpy(problem.labels.astype(np.int64))
  results = {}
  for name in names:
    attack = (torch_autoattack.cascade(attacks) if name == "autoattack" else attacks[name])
    correct, seconds = [], 0.0
    for start in range(0, len(labels), args.batch_size):
      x, y = images[start:start + args.batch_size], labels[start:start + args.batch_size]
      adversarial, elapsed = _timed(functools.partial(attack, x, y))
      seconds += elapsed
      with torch.no_grad():
        clean_ok = problem.torch_model(x).argmax(1) == y
        correct.append((problem.torch_model(adversarial).argmax(1) == y) & clean_ok)
    results[name] = {"accuracy": float(torch.cat(correct).float().mean()), "seconds": seconds}
  return results


def markdown(report: dict[str, Any]) -> str:
  rows = ["| attack | act-jax img/s (compiled) | act-jax first call s (compile) | "
          "torchattacks img/s | speed-up | act-jax accuracy % | torchattacks accuracy % |",
          "|---|---|---|---|---|---|---|"]
  for name, row in report["rows"].items():
    jax_row, torch_row = row["jax"], row["torch"]
    rows.append(
        f"| {name} | {row['jax_images_per_second']:.1f} | {jax_row['first_call_seconds']:.1f} "
        f"({jax_row['compile_seconds']:.1f}) | {row['torch_images_per_second']:.1f} | "
        f"{row['speedup']:.2f}x | {100 * jax_row['accuracy']:.2f} | "
        f"{100 * torch_row['accuracy']:.2f} |")
  rows.append("")
  clean = next(iter(report["rows"].values()))["jax"]["clean"]
  rows.append(f"{report['problem']}, {report['num_examples']} examples ({100 * clean:.2f}% "
              "correct clean: torchattacks attacks those, act-jax every example), L-inf eps "
              f"{report['eps']:.4g}, batch {report['batch_size']}; {report['device']}; the "
              f"whole command took {report['wall_seconds']:.0f} s.")
  return "\n".join(rows)


def device_description() -> str:
  """The throughput benchmark's description of the machine, with the JAX device count."""
  import jax

  from benchmarks import throughput
  return (f"{throughput.device_description()}, {jax.device_count()} JAX "
          f"{jax.devices()[0].platform} device(s)")


def main(argv: list[str]) -> dict[str, Any]:
  began = time.perf_counter()
  args = parse_args(argv)
  from act_jax import parallel
  parallel.use_one_cpu_device_per_core([args.batch_size])
  import jax
  import torch
  import torchattacks
  problem = load_problem(args)
  names = list(args.stages)
  if not (args.no_cascade or args.workload):
    names.append("autoattack")
  jax_results = jax_side(problem, args, names)
  torch_results = torch_side(problem, args, names)
  rows = {}
  for name in names:
    jax_rate = len(problem.labels) / jax_results[name]["seconds"]
    torch_rate = len(problem.labels) / torch_results[name]["seconds"]
    rows[name] = {"jax": jax_results[name], "torch": torch_results[name],
                  "jax_images_per_second": jax_rate, "torch_images_per_second": torch_rate,
                  "speedup": jax_rate / torch_rate}
  report = {"command": reports.command_line("benchmarks.attack_throughput", argv),
            "problem": problem.name, "num_examples": len(problem.labels), "eps": problem.eps,
            "batch_size": args.batch_size, "apgd_steps": args.apgd_steps,
            "fab_steps": args.fab_steps, "square_queries": args.square_queries,
            "device": device_description(),
            "versions": {"jax": jax.__version__, "torch": torch.__version__,
                         "torchattacks": torchattacks.__version__,
                         "python": platform.python_version()},
            "rows": rows, "wall_seconds": time.perf_counter() - began}
  table = markdown(report)
  name = (f"attacks_{problem.architecture}_n{len(problem.labels)}_b{args.batch_size}_"
          f"{jax.default_backend()}")
  stem = reports.write_report(args.output_dir, name, report, table)
  print(table)
  print(f"\nwrote {stem}.json and {stem}.md", file=sys.stderr)
  return report


if __name__ == "__main__":
  main(sys.argv[1:])
