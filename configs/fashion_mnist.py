"""The default job: ACT with a small CNN on Fashion-MNIST, sized for ~10 minutes on 2 CPU cores.

Tuned on a validation hold-out (the last 10,000 training images), never on the test split:
3 epochs with the learning rate cut 10x for the last quarter, and a 5-step training attack of
step 0.025 (travel 1.25 eps), which lets 3 epochs fit where PGD-10 fits 2. Each candidate's
validation accuracy is in docs/studies.md ("Choosing the Fashion-MNIST recipe"). Evaluation is
PGD-20 with step 0.01 at the same eps, 0.1. `python -m act_jax.study` runs natural training,
PGD-AT and TRADES on this same recipe for comparison.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.dataset.name = "fashion_mnist"
  config.model.name = "small_cnn"
  config.model.base_width = 16
  config.attack.eps = 0.1
  config.attack.step_size = 0.025
  config.attack.num_steps = 5
  config.eval.eps = 0.1
  config.eval.step_size = 0.01
  config.eval.batch_size = 512
  config.optim.learning_rate = 0.05
  config.optim.lr_decay_epochs = (2.25,)  # a fine-tuning phase over the last quarter
  config.optim.lr_decay_factor = 0.1
  config.train.epochs = 3
  config.train.checkpoint_every_steps = 200
  return config
