"""The benchmarked workloads: each names a model in both frameworks, its input and its recipe."""

import dataclasses
import importlib

import ml_collections


@dataclasses.dataclass(frozen=True)
class Workload:
  """`model`: the act_jax name; `torch_model`: the act_jax.pytorch.models name; `config`: the
  `configs/<name>.py` recipe whose attack, ACT and optimiser settings the step uses."""
  model: str
  torch_model: str
  image_shape: tuple[int, int, int]  # height, width, channels
  num_classes: int
  config: str

  def recipe(self) -> ml_collections.ConfigDict:
    return importlib.import_module(f"configs.{self.config}").get_config()


WORKLOADS = {
    "small_cnn": Workload("small_cnn", "small_cnn", (28, 28, 1), 10, "fashion_mnist"),
    "resnet18_cifar": Workload("resnet18_cifar", "resnet18_cifar", (32, 32, 3), 10, "cifar10"),
    "resnet50": Workload("resnet50_imagenet", "resnet50_imagenet", (224, 224, 3), 1000,
                         "imagenet"),
}
