"""ImageNet, ResNet-50 (ACT spec, "Training recipes"), for a TPU pod slice or a GPU cluster.

Learning rate: the release trains with lr 0.1 at 64 images per GPU. We read 0.1 as the rate for
a global batch of 256 (the standard ResNet-50 reference point) and scale it linearly with the
global batch (Goyal et al. 2017): lr = 0.1 * batch_size / 256, with a 5-epoch linear warmup, which
large batches need. The default global batch of 1024 is the release's 64 per accelerator on 16
chips (a v4-32 slice) and gives lr 0.4. Change `--config.train.batch_size` alone and the lr
follows; set `--config.optim.base_batch_size=None` to use `optim.learning_rate` as it is.

Attack step: the release uses step 1.0 with eps 2/255, so every step is a full-eps sign step
(FGSM-like restarts). The default here is 0.5/255 with 10 steps (total travel 2.5x eps, the usual
PGD ratio); set `--config.attack.step_size=1.0` for the release's behaviour.

Data: prepare `imagenet2012` with TFDS in advance (it needs the manual download) and point
`--config.dataset.data_dir` at it, e.g. gs://BUCKET/tensorflow_datasets.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.dataset.name = "imagenet2012"
  config.dataset.image_size = 224
  config.model.name = "resnet50_imagenet"
  config.model.dtype = "bfloat16"  # float32 params and optimiser state; see README
  config.attack.eps = 2 / 255
  config.attack.step_size = 0.5 / 255
  config.attack.num_steps = 10
  config.eval.eps = 2 / 255
  config.eval.step_size = 0.5 / 255
  config.eval.num_steps = 100
  config.train.batch_size = 1024
  config.train.epochs = 100
  config.optim.learning_rate = 0.1
  config.optim.base_batch_size = 256
  config.optim.warmup_epochs = 5.0
  config.optim.weight_decay = 1e-5
  config.optim.lr_decay_epochs = (30, 60, 90)
  config.optim.lr_decay_factor = 0.1
  config.train.eval_every_steps = 10_000
  config.eval.batch_size = 1024
  return config
