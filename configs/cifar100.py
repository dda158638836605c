"""CIFAR-100, ResNet-18 with the release's CIFAR recipe."""

from configs import cifar10


def get_config():
  config = cifar10.get_config()
  config.dataset.name = "cifar100"
  return config
