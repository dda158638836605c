"""`python -m act_jax.prepare_data --dataset=cifar10 [--data_dir=DIR] [--manual_dir=DIR]`

Downloads and prepares a TFDS dataset once, before any run: training and evaluation only read
prepared data (on a cluster, every worker would otherwise start the same download or build).
CIFAR-10/100, and any other TFDS image classification dataset named by its TFDS name, are
downloaded, prepared and cached as `.npz` arrays (later runs need no TensorFlow); ImageNet is
built from its two tarballs, which TFDS cannot download (put them in DATA_DIR/downloads/manual
or pass --manual_dir). Needs the `[tfds]` extra. Fashion-MNIST needs
no preparation: `apt-get install dataset-fashion-mnist`.
"""

from absl import app, flags, logging

from act_jax import command_line
from act_jax.data import catalog

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", None,
                    f"The dataset to prepare: {', '.join(catalog.TFDS_DATASETS)}, or any TFDS "
                    "image classification dataset by its TFDS name (e.g. mnist), which runs "
                    "then read with --config.dataset.name=tfds --config.dataset.tfds_name=NAME.",
                    required=True)
flags.DEFINE_string("data_dir", None,
                    "The TFDS data directory runs will read (their dataset.data_dir; default: "
                    "~/tensorflow_datasets); may be gs://...")
flags.DEFINE_string("manual_dir", None,
                    "ImageNet only: where ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
                    "are (default: DATA_DIR/downloads/manual).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  root = catalog.data_dir_root(FLAGS.data_dir)
  if FLAGS.dataset in catalog.TFDS_DATASETS:
    from act_jax.data import tfds_pipeline
    tfds_pipeline.prepare(FLAGS.dataset, FLAGS.data_dir, FLAGS.manual_dir)
    print(f"{FLAGS.dataset} is prepared in {root}; runs read it with "
          f"--config.dataset.data_dir={root}", flush=True)
    return
  from act_jax.data import tfds_by_name
  cached = tfds_by_name.prepare(FLAGS.dataset, FLAGS.data_dir)
  splits = "" if "test" in cached else (
      " --config.dataset.tfds_train_split='train[:90%]' "
      "--config.dataset.tfds_test_split='train[90%:]' (it has no test split: hold one out)")
  print(f"{FLAGS.dataset} is prepared in {root}; runs read it with --config.dataset.name=tfds "
        f"--config.dataset.tfds_name={FLAGS.dataset} --config.dataset.data_dir={root}{splits}",
        flush=True)


if __name__ == "__main__":
  command_line.run(main)
