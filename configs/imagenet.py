"""ImageNet, ResNet-50 (ACT spec, "Training recipes"; scaled out further by the launch scripts).

The release trains with 64 images per GPU at lr 0.1. This config uses a global batch of 256 at
lr 0.1 * 256 / 256 (linear scaling from a 256 reference batch); change both together.

Attack step: the release uses step 1.0 with eps 2/255, so every step is a full-eps sign step
(FGSM-like restarts). The default here is 0.5/255 with 10 steps (total travel 2.5x eps, the usual
PGD ratio); set `--config.attack.step_size=1.0` for the release's behaviour.
"""

from configs import common


def get_config():
  config = common.base_config()
  config.dataset.name = "imagenet2012"
  config.dataset.image_size = 224
  config.model.name = "resnet50_imagenet"
  config.attack.eps = 2 / 255
  config.attack.step_size = 0.5 / 255
  config.attack.num_steps = 10
  config.eval.eps = 2 / 255
  config.eval.step_size = 0.5 / 255
  config.eval.num_steps = 100
  config.train.batch_size = 256
  config.train.epochs = 100
  config.optim.learning_rate = 0.1 * config.train.batch_size / 256
  config.optim.weight_decay = 1e-5
  config.optim.lr_decay_epochs = (30, 60, 90)
  config.optim.lr_decay_factor = 0.1
  config.train.checkpoint_every_steps = 2000
  config.train.eval_every_steps = 25000
  config.eval.batch_size = 256
  return config
