"""SGD with PyTorch-style coupled weight decay and piecewise-constant learning-rate schedules."""

import ml_collections
import optax


def learning_rate_schedule(optim_config: ml_collections.ConfigDict,
                           steps_per_epoch: int) -> optax.Schedule:
  """lr, multiplied by `lr_decay_factor` at each epoch in `lr_decay_epochs`.

  The release steps its schedule at epoch boundaries; converting the epochs to step counts gives
  the same learning rate at every step.
  """
  boundaries = {int(epoch * steps_per_epoch): optim_config.lr_decay_factor
                for epoch in optim_config.lr_decay_epochs}
  return optax.piecewise_constant_schedule(optim_config.learning_rate, boundaries)


def sgd_with_coupled_weight_decay(optim_config: ml_collections.ConfigDict,
                                  steps_per_epoch: int) -> optax.GradientTransformation:
  """What `torch.optim.SGD(momentum=m, weight_decay=wd)` does.

  PyTorch adds wd * p to the gradient *before* the momentum buffer (coupled, not AdamW-style
  decoupled): buf = m * buf + (g + wd * p); p -= lr * buf. It decays every parameter, BatchNorm
  scales and biases included, as the release does.
  """
  return optax.chain(
      optax.add_decayed_weights(optim_config.weight_decay),
      optax.sgd(learning_rate_schedule(optim_config, steps_per_epoch),
                momentum=optim_config.momentum, nesterov=False),
  )
