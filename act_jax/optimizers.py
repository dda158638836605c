"""SGD with PyTorch-style coupled weight decay, and the learning-rate schedule around it."""

import ml_collections
import optax


def peak_learning_rate(optim_config: ml_collections.ConfigDict,
                       global_batch_size: int | None) -> float:
  """`learning_rate`, scaled linearly with the batch when `base_batch_size` is set.

  Linear scaling (Goyal et al. 2017): lr = learning_rate * global_batch_size / base_batch_size,
  so a recipe stated for one batch size keeps its per-example step size at another.
  """
  base = optim_config.get("base_batch_size")
  if base is None:
    return optim_config.learning_rate
  if global_batch_size is None:
    raise ValueError("optim.base_batch_size is set: the global batch size is needed to scale "
                     "the learning rate")
  return optim_config.learning_rate * global_batch_size / base


SCHEDULES = ("piecewise", "cosine")


def learning_rate_schedule(optim_config: ml_collections.ConfigDict, steps_per_epoch: int, *,
                           global_batch_size: int | None = None,
                           total_steps: int | None = None) -> optax.Schedule:
  """The learning rate at every step: `optim.schedule` after an optional linear warmup.

  "piecewise" (the release's): the peak lr, multiplied by `lr_decay_factor` at each epoch in
  `lr_decay_epochs`; the release steps its schedule at epoch boundaries, and converting the
  epochs to step counts gives the same lr at every step. "cosine": from the peak down to 0 at
  `total_steps` (Loshchilov and Hutter 2017), which uses a short budget well. With
  `warmup_epochs` > 0 the lr first ramps linearly from peak / warmup_steps to the peak, as
  large-batch ImageNet training needs (Goyal et al.); config validation keeps every piecewise
  decay after the warmup.
  """
  peak = peak_learning_rate(optim_config, global_batch_size)
  warmup_steps = int(optim_config.get("warmup_epochs", 0) * steps_per_epoch)
  if optim_config.get("schedule", "piecewise") == "cosine":
    if total_steps is None:
      raise ValueError("optim.schedule = 'cosine' needs the run's total number of steps")
    after_warmup = optax.cosine_decay_schedule(peak, max(total_steps - warmup_steps, 1))
  else:
    after_warmup = optax.piecewise_constant_schedule(peak, {
        int(epoch * steps_per_epoch) - warmup_steps: optim_config.lr_decay_factor
        for epoch in optim_config.lr_decay_epochs})
  if warmup_steps <= 0:
    return after_warmup
  warmup = optax.linear_schedule(peak / warmup_steps, peak, transition_steps=warmup_steps - 1)
  return optax.join_schedules([warmup, after_warmup], [warmup_steps])


def sgd_with_coupled_weight_decay(optim_config: ml_collections.ConfigDict,
                                  learning_rate: optax.ScalarOrSchedule
                                  ) -> optax.GradientTransformation:
  """What `torch.optim.SGD(momentum=m, weight_decay=wd)` does, at `learning_rate` (a schedule
  from `learning_rate_schedule`, or a constant).

  PyTorch adds wd * p to the gradient *before* the momentum buffer (coupled, not AdamW-style
  decoupled): buf = m * buf + (g + wd * p); p -= lr * buf. It decays every parameter, BatchNorm
  scales and biases included, as the release does.
  """
  return optax.chain(
      optax.add_decayed_weights(optim_config.weight_decay),
      optax.sgd(learning_rate, momentum=optim_config.momentum, nesterov=False),
  )
