"""CIFAR-10, ResNet-18: the ACT release's recipe (ACT spec, "Training recipes")."""

from configs import base


def get_config():
  config = base.get_config()
  config.dataset.name = "cifar10"
  config.model.name = "resnet18_cifar"
  config.attack.eps = 0.031
  config.attack.step_size = 0.007
  config.attack.num_steps = 10
  config.eval.eps = 0.031
  config.eval.step_size = 0.003
  config.optim.learning_rate = 0.1
  config.optim.lr_decay_epochs = (60, 120, 160)
  config.optim.lr_decay_factor = 0.2
  config.train.epochs = 200
  config.train.checkpoint_every_steps = 2000
  config.train.eval_every_steps = 3910  # every 10 epochs of 391 steps
  return config
