"""CIFAR-10, ResNet-18: the ACT release's recipe (ACT spec, "Training recipes")."""

from configs import common


def get_config():
  config = common.base_config()
  config.dataset.name = "cifar10"
  config.model.name = "resnet18_cifar"
  config.train.batch_size = 128
  config.train.epochs = 200
  config.optim.learning_rate = 0.1
  config.optim.weight_decay = 5e-4
  config.optim.lr_decay_epochs = (60, 120, 160)
  config.optim.lr_decay_factor = 0.2
  config.train.checkpoint_every_steps = 2000
  config.train.eval_every_steps = 3910  # every 10 epochs of 391 steps
  return config
