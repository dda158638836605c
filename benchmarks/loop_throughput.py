"""The real training loop over the real input path, beside the step alone and the input alone.

    python -m benchmarks.loop_throughput --model resnet18_cifar --batch 128 --pgd_steps 10

- loop: `act_jax.train.train_and_evaluate` on the workload's recipe for `--steps` steps, fed by
  the input path training uses (Fashion-MNIST: the IDX files; CIFAR-shaped: random uint8
  images written as the array cache that the CIFAR pipeline reads, then served from device
  memory). Steady state is the mean img/s of the loop's logging windows after the first.
- step: the same ACT step compiled alone on synthetic device data, `--steps` steps between two
  synchronisations (`python -m benchmarks.throughput`'s headline figure).
- input: the input path alone. In memory (Fashion-MNIST and CIFAR): the gather and
  augmentation a step runs on the devices. ImageNet: tf.data's JPEG decode, random resized crop
  and flip on `tfds.testing.mock_data` images, on this host's cores (needs TensorFlow).
Writes `<output_dir>/loop_<model>_b<batch>_k<K>_<platform>.json` and `.md` (default output dir
workdirs/benchmarks). On CPU, XLA gets one device per core, as training does.
"""

import argparse
import datetime
import itertools
import os
import platform
import sys
import tempfile
import time
from typing import Any
from unittest import mock

from act_jax import parallel
from benchmarks import reports

CORES = len(os.sched_getaffinity(0))


def parse_args(argv: list[str]) -> argparse.Namespace:
  from benchmarks.workloads import WORKLOADS
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", required=True, choices=sorted(WORKLOADS))
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--pgd_steps", type=int, default=10)
  parser.add_argument("--steps", type=int, default=60, help="training steps the loop takes")
  parser.add_argument("--log_every", type=int, default=20, help="the loop's logging window")
  parser.add_argument("--examples", type=int, default=10_000,
                      help="random CIFAR-shaped training examples (CIFAR workloads)")
  parser.add_argument("--imagenet_batches", type=int, default=10,
                      help="batches of the tf.data ImageNet pipeline to time (0: skip)")
  parser.add_argument("--output_dir", default=reports.DEFAULT_OUTPUT_DIR,
                      help=reports.OUTPUT_DIR_HELP)
  args = reports.parse_flags(parser, argv)
  for name in ("batch", "steps", "log_every", "examples"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be >= 1")
  if args.steps < 2 * args.log_every:
    parser.error("--steps must cover at least two logging windows (the first is warm-up)")
  return args


def loop_config(workload: Any, args: argparse.Namespace, data_dir: str) -> Any:
  """The workload's recipe, run for `--steps` steps with a token final evaluation."""
  config = workload.recipe()
  config.attack.num_steps = args.pgd_steps
  config.train.batch_size = args.batch
  config.train.max_steps = args.steps
  config.train.log_every_steps = args.log_every
  config.train.checkpoint_every_steps = args.steps
  config.train.eval_every_steps = 0
  config.eval.num_steps = 1
  config.eval.num_examples = config.eval.batch_size
  if config.dataset.name != "fashion_mnist":
    config.dataset.data_dir = data_dir
  return config


def write_random_cifar(data_dir: str, name: str, examples: int, num_classes: int) -> None:
  """Random images where the CIFAR pipeline caches its arrays: the real path, synthetic data."""
  import numpy as np

  from act_jax.data import catalog
  data = np.random.default_rng(0)
  for split, count in (("train", examples), ("test", 512)):
    path = catalog.npz_cache_path(data_dir, name, split)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, image=data.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8),
             label=data.integers(0, num_classes, count).astype(np.int32))


def time_loop(workload: Any, args: argparse.Namespace) -> dict[str, Any]:
  from act_jax import train
  with tempfile.TemporaryDirectory() as scratch:
    config = loop_config(workload, args, os.path.join(scratch, "data"))
    if config.dataset.name in ("cifar10", "cifar100"):
      write_random_cifar(config.dataset.data_dir, config.dataset.name, args.examples,
                         workload.num_classes)
    results = train.train_and_evaluate(config, os.path.join(scratch, "run"))
  windows = [entry["images_per_second"] for entry in results["train_log"]]
  steady = windows[1:]
  return {"windows_images_per_second": windows,
          "images_per_second": sum(steady) / len(steady)}


def time_step(workload: Any, args: argparse.Namespace) -> dict[str, Any]:
  import jax
  import jax.numpy as jnp

  from benchmarks import jax_act_step
  from benchmarks.timing import time_window
  dtype = jnp.dtype(workload.recipe().model.dtype)
  step = jax_act_step.compile_act_step(workload, batch_size=args.batch, pgd_steps=args.pgd_steps,
                                       model_dtype=dtype, devices=jax.local_devices())
  timing = time_window(step.step, step.synchronize, warmup_steps=2, timed_steps=args.steps)
  return {"images_per_second": args.batch / timing.median_seconds}


def time_in_memory_input(workload: Any, args: argparse.Namespace) -> dict[str, Any]:
  """The device-side gather (and CIFAR augmentation) of the in-memory path, on its own."""
  import jax
  import numpy as np

  from act_jax.data import catalog, in_memory
  height, width, channels = workload.image_shape
  data = np.random.default_rng(0)
  split = catalog.Split(data.integers(0, 256, (args.examples, height, width, channels),
                                       dtype=np.uint8),
                         data.integers(0, workload.num_classes, args.examples).astype(np.int32))
  stream = in_memory.InMemoryTrainData(split, global_batch_size=args.batch, seed=0,
                                       mesh=parallel.make_mesh(), augment=channels == 3)
  jax.block_until_ready(stream.batch(0))
  start = time.perf_counter()
  batches = [stream.batch(step) for step in range(1, args.steps + 1)]
  jax.block_until_ready(batches)
  return {"images_per_second": args.steps * args.batch / (time.perf_counter() - start),
          "where": "devices (gather and augment next to the step)"}


def time_imagenet_input(args: argparse.Namespace) -> dict[str, Any]:
  """tf.data's ImageNet training pipeline on mock JPEGs, on this host's cores."""
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    return {"skipped": "TensorFlow is not installed (pip install -e '.[tfds]')"}
  from act_jax.data import tfds_pipeline
  # Mock data counts as prepared (act_jax reads only prepared datasets).
  with tempfile.TemporaryDirectory() as data_dir, tfds.testing.mock_data(
      num_examples=args.batch * (args.imagenet_batches + 2)), mock.patch.object(
          tfds.core.DatasetBuilder, "is_prepared", return_value=True):
    batches = tfds_pipeline.imagenet_train_batches(per_process_batch_size=args.batch, seed=0,
                                                   data_dir=data_dir)
    next(batches)  # builds the pipeline, fills the prefetch buffer
    start = time.perf_counter()
    count = sum(1 for _ in itertools.islice(batches, args.imagenet_batches))
    seconds = time.perf_counter() - start
  return {"images_per_second": count * args.batch / seconds,
          "where": f"host, {CORES} core(s), tf.data (mock JPEGs of TFDS's test data)"}


def markdown(report: dict[str, Any]) -> str:
  meta, rows = report["meta"], report["rows"]
  lines = [f"{meta['model']}, batch {meta['batch']}, PGD-{meta['pgd_steps']}, {meta['steps']} "
           f"steps, on {meta['device']} ({meta['jax_devices']} JAX device(s); jax "
           f"{meta['jax']}), {meta['date']}", "",
           "| measurement | img/s | note |", "|---|---|---|"]
  for name, row in rows.items():
    if "skipped" in row:
      lines.append(f"| {name} | skipped | {row['skipped']} |")
    else:
      lines.append(f"| {name} | {row['images_per_second']:.1f} | {row.get('note', '')} |")
  lines += ["", f"Command: `{meta['command']}`"]
  return "\n".join(lines)


def main(argv: list[str]) -> dict[str, Any]:
  args = parse_args(argv)
  command = reports.command_line("benchmarks.loop_throughput", argv)  # the user's XLA_FLAGS
  parallel.use_one_cpu_device_per_core([args.batch])
  import jax

  from benchmarks.throughput import device_description
  from benchmarks.workloads import WORKLOADS
  workload = WORKLOADS[args.model]
  print("timing the step alone ...", file=sys.stderr, flush=True)
  step = time_step(workload, args)
  print("timing the training loop ...", file=sys.stderr, flush=True)
  loop = time_loop(workload, args)
  loop["note"] = (f"{100 * (loop['images_per_second'] / step['images_per_second'] - 1):+.1f}% "
                  "against the step alone; mean of the logging windows after the first")
  step["note"] = f"{args.steps} steps between two synchronisations"
  print("timing the input alone ...", file=sys.stderr, flush=True)
  rows = {"training loop (real input path)": loop, "step alone (synthetic device data)": step,
          "input alone, in memory": time_in_memory_input(workload, args)}
  rows["input alone, in memory"]["note"] = rows["input alone, in memory"]["where"]
  if args.imagenet_batches:
    imagenet = time_imagenet_input(args)
    imagenet["note"] = imagenet.get("where", "")
    rows["input alone, ImageNet tf.data (224 px)"] = imagenet
  report = {"meta": {"model": args.model, "batch": args.batch, "pgd_steps": args.pgd_steps,
                     "steps": args.steps, "device": device_description(),
                     "jax_devices": jax.device_count(), "jax": jax.__version__,
                     "python": platform.python_version(),
                     "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
                     "command": command},
            "rows": rows}
  table = markdown(report)
  reports.write_report(args.output_dir, f"loop_{args.model}_b{args.batch}_k{args.pgd_steps}_"
                       f"{jax.default_backend()}", report, table)
  print(table)
  return report


if __name__ == "__main__":
  main(sys.argv[1:])
