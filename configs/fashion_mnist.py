"""The default job: ACT with a small CNN on Fashion-MNIST, sized for minutes on 2 CPU cores."""

from configs import common


def get_config():
  config = common.base_config()
  config.dataset.name = "fashion_mnist"
  config.model.name = "small_cnn"
  config.model.base_width = 16
  config.attack.eps = 0.1
  config.attack.step_size = 0.01
  config.attack.num_steps = 10
  config.eval.eps = 0.1
  config.eval.step_size = 0.01
  config.eval.num_steps = 20
  config.optim.learning_rate = 0.05
  config.optim.weight_decay = 5e-4
  config.optim.lr_decay_epochs = (0.75,)  # a short fine-tuning phase at the end of the epoch
  config.optim.lr_decay_factor = 0.1
  config.train.batch_size = 128
  config.train.epochs = 1
  config.train.log_every_steps = 20
  config.train.checkpoint_every_steps = 200
  config.eval.batch_size = 512
  return config
