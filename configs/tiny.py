"""The Fashion-MNIST job shrunk to seconds, for tests and smoke runs: a CNN of width 4, batches
of 16, 2 epochs with the learning rate cut after the first, 2-step attacks."""

from configs import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.model.base_width = 4
  config.attack.num_steps = 2
  config.eval.num_steps = 2
  config.eval.batch_size = 16
  config.train.batch_size = 16
  config.train.epochs = 2
  config.train.log_every_steps = 2
  config.train.checkpoint_every_steps = 3
  config.optim.lr_decay_epochs = (1,)
  return config
