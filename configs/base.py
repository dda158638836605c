"""What every recipe shares; each `configs/<recipe>.py` states only what differs.

Fields a recipe must set are placeholders (None): a recipe that forgets one fails config
validation, naming the field. Every field is overridable from the command line, e.g.
`--config.train.epochs=3`.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.method = "act"  # natural, pgd_at, trades or act (act_jax.methods)
  config.seed = 0

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = config_dict.placeholder(str)  # fashion_mnist, cifar10, ..., npz, tfds
  config.dataset.data_dir = config_dict.placeholder(str)  # TFDS data dir; may be gs://...
  config.dataset.image_size = config_dict.placeholder(int)  # imagenet2012 only (default 224)
  config.dataset.fashion_mnist_dir = "/usr/share/datasets/fashion-mnist"
  # One's own data (docs/own_data.md): the .npz file (name npz) or the folder (image_folder).
  config.dataset.path = config_dict.placeholder(str)
  # Any TFDS image classification dataset (name tfds; docs/own_data.md): its TFDS name, e.g.
  # "mnist" or "svhn_cropped", and the TFDS splits that serve as train and test (unset: "train"
  # and "test"; placeholders, so that a run recorded before these fields resumes unchanged).
  config.dataset.tfds_name = config_dict.placeholder(str)
  config.dataset.tfds_train_split = config_dict.placeholder(str)
  config.dataset.tfds_test_split = config_dict.placeholder(str)
  # Hold out the last N training examples as a validation split (eval.split = "validation"),
  # for tuning recipes without touching the test split; 0 trains on the whole training split.
  config.dataset.validation_examples = 0

  config.model = ml_collections.ConfigDict()
  config.model.name = config_dict.placeholder(str)  # act_jax.models.MODEL_NAMES
  config.model.dtype = "float32"  # or "bfloat16": compute dtype; params stay float32
  config.model.sync_batch_norm = True  # False: per-device BN statistics, as the release under DDP
  config.model.base_width = config_dict.placeholder(int)  # None: the architecture's default

  # ACT spec, "Notation": alpha_G, alpha_F and the distillation temperature T.
  config.act = ml_collections.ConfigDict()
  config.act.natural_alpha = 0.9
  config.act.robust_alpha = 0.9
  config.act.temperature = 4.0

  # TRADES (Zhang et al. 2019): the weight of the KL term; 6 is the paper's CIFAR setting.
  config.trades = ml_collections.ConfigDict()
  config.trades.beta = 6.0

  # The training attack of every adversarial method (ACT spec, step 2, for ACT).
  config.attack = ml_collections.ConfigDict()
  config.attack.eps = config_dict.placeholder(float)
  config.attack.step_size = config_dict.placeholder(float)
  config.attack.num_steps = config_dict.placeholder(int)
  config.attack.loss_reduction = "reference"  # ACT only; or "mean", see attacks/objectives.py

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = config_dict.placeholder(float)
  # Set: the lr above is for this global batch and scales linearly with train.batch_size.
  config.optim.base_batch_size = config_dict.placeholder(int)
  config.optim.warmup_epochs = 0.0  # linear warmup to the peak lr (large-batch runs)
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4  # the release's, on every parameter
  config.optim.schedule = "piecewise"  # or "cosine" (to 0 at the last step)
  config.optim.lr_decay_epochs = config_dict.placeholder(tuple)  # piecewise only
  config.optim.lr_decay_factor = config_dict.placeholder(float)

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 128  # global, over all devices and hosts
  config.train.epochs = config_dict.placeholder(int)
  config.train.max_steps = config_dict.placeholder(int)  # set: stop after this many steps instead
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 1000
  config.train.max_checkpoints_to_keep = 3
  config.train.eval_every_steps = 0  # 0: evaluate only at the end

  # White-box evaluation (ACT spec, "Evaluation"): PGD-20, uniform start, CE.
  config.eval = ml_collections.ConfigDict()
  config.eval.eps = config_dict.placeholder(float)
  config.eval.step_size = config_dict.placeholder(float)
  config.eval.num_steps = 20
  config.eval.batch_size = 256
  config.eval.num_examples = config_dict.placeholder(int)  # None: the whole split
  # The periodic evaluations (train.eval_every_steps; the learning curve) on the first N
  # examples of the same split; None: as many as the final evaluation (eval.num_examples).
  config.eval.periodic_num_examples = config_dict.placeholder(int)
  config.eval.split = "test"  # or "validation" (needs dataset.validation_examples > 0)
  return config
