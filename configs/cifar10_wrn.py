"""CIFAR-10, WideResNet-28-10 (pre-activation, as TRADES) with the release's CIFAR recipe."""

from configs import cifar10


def get_config():
  config = cifar10.get_config()
  config.model.name = "wrn28_10"
  return config
