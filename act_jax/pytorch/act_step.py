"""The ACT train step in plain PyTorch: the baseline a PyTorch user would run against act_jax.

Written independently from the ACT spec ("One training step"), on the models of
`act_jax.pytorch.models`, so that `benchmarks.throughput` compares the same computation in both
frameworks and `tests/test_torch_parity.py` checks that they agree number for number.
"""

import contextlib
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from act_jax.methods.act import ACTHyperparams
from act_jax.pytorch.models import ACT_INIT_STD

ATTACK_LOSS_REDUCTIONS = ("reference", "mean")


# Losses (ACT spec, "Notation").


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    temperature: float) -> torch.Tensor:
  """KL_T(s || t) = T^2 / B * sum KL(softmax(t/T) || softmax(s/T)), no gradient to the teacher,
  as the release's `KLDivLoss(size_average=False) * T^2 / B`."""
  teacher = F.softmax(teacher_logits.detach().float() / temperature, dim=1)
  student = F.log_softmax(student_logits.float() / temperature, dim=1)
  return temperature**2 * F.kl_div(student, teacher, reduction="batchmean")


def act_model_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   labels: torch.Tensor, *, alpha: float,
                   temperature: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
  """(1 - alpha) * CE(student, y) + alpha * KL_T(student || teacher.detach()), and its parts."""
  ce = F.cross_entropy(student_logits.float(), labels)
  kl = distillation_kl(student_logits, teacher_logits, temperature)
  total = (1.0 - alpha) * ce + alpha * kl
  accuracy = (student_logits.argmax(dim=1) == labels).float().mean()
  parts = {"loss": total, "ce": ce, "kl": kl, "accuracy": accuracy}
  return total, {k: v.detach() for k, v in parts.items()}


def act_attack_objective(logits: torch.Tensor, labels: torch.Tensor,
                         natural_probs: torch.Tensor, *, alpha: float,
                         reduction: str) -> torch.Tensor:
  """(1 - alpha) * CE_mean + alpha * KL_sum (temperature 1), as the release ("reference");
  "mean" averages the KL too."""
  log_probs = F.log_softmax(logits.float(), dim=1)
  kl = F.kl_div(log_probs, natural_probs, reduction="sum")
  if reduction == "mean":
    kl = kl / logits.shape[0]
  return (1.0 - alpha) * F.nll_loss(log_probs, labels) + alpha * kl


# The step.


class StepOutput(NamedTuple):
  """Metrics ("natural/loss", "robust/ce", ...: detached 0-d tensors, no host sync) and x'."""
  metrics: dict[str, torch.Tensor]
  adversarial: torch.Tensor


def sgd(model: nn.Module, learning_rate: float, weight_decay: float,
        momentum: float = 0.9) -> torch.optim.SGD:
  """The release's optimiser; act_jax's `sgd_with_coupled_weight_decay` reproduces it."""
  return torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum,
                         weight_decay=weight_decay)


class TorchACT:
  """Both ACT models with their optimisers, and `step` for one ACT update of both.

  `bf16` runs the forward passes under CUDA bf16 autocast with float32 losses, the closest
  PyTorch counterpart of act_jax's bfloat16 compute with float32 params (`autocast_cache=False`
  for CUDA-graph capture, which autocast's weight cache breaks); `channels_last` uses the
  memory format that GPU convolutions prefer. Images and labels go to `device`.
  `compiled_step` and `capture_step_graph` below give the whole step compiled, or captured.
  """

  def __init__(self, natural: nn.Module, robust: nn.Module, hp: ACTHyperparams, *,
               learning_rate: float, weight_decay: float, momentum: float = 0.9,
               device: str | torch.device = "cpu", bf16: bool = False,
               channels_last: bool = False, autocast_cache: bool = True):
    if hp.attack_loss_reduction not in ATTACK_LOSS_REDUCTIONS:
      raise ValueError(f"attack loss reduction {hp.attack_loss_reduction!r}; allowed: "
                       f"{', '.join(ATTACK_LOSS_REDUCTIONS)}")
    self.device = torch.device(device)
    if bf16 and self.device.type != "cuda":
      raise ValueError("bf16 autocast is only offered on CUDA devices")
    self.hp, self.bf16, self.channels_last = hp, bf16, channels_last
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    self.natural = natural.to(self.device, memory_format=memory_format)
    self.robust = robust.to(self.device, memory_format=memory_format)
    self.natural_optimizer = sgd(self.natural, learning_rate, weight_decay, momentum)
    self.robust_optimizer = sgd(self.robust, learning_rate, weight_decay, momentum)
    self.autocast_cache = autocast_cache

  def _autocast(self) -> contextlib.AbstractContextManager:
    if self.bf16:
      return torch.autocast(device_type="cuda", dtype=torch.bfloat16,
                            cache_enabled=self.autocast_cache)
    return contextlib.nullcontext()

  def to_input(self, images: torch.Tensor) -> torch.Tensor:
    """`images` as float32 on the trainer's device, in the models' memory format."""
    images = images.to(self.device, torch.float32)
    return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

  def attack(self, images: torch.Tensor, labels: torch.Tensor, natural_logits: torch.Tensor,
             noise: torch.Tensor | None = None) -> torch.Tensor:
    """x' for the robust model, crafted with it in eval mode (ACT spec, step 2).

    Starts at x + 0.001 * noise (not clipped), noise ~ N(0, I) unless given, then K sign steps
    on `act_attack_objective`, each projected onto the L-inf eps-ball around x and [0, 1].
    """
    hp, budget = self.hp, self.hp.attack
    if noise is None:
      noise = torch.randn_like(images)
    natural_probs = F.softmax(natural_logits.detach().float(), dim=1)
    adversarial = (images + ACT_INIT_STD * self.to_input(noise)).detach()
    self.robust.eval()
    for _ in range(budget.num_steps):
      adversarial.requires_grad_(True)
      with self._autocast():
        logits = self.robust(adversarial)
      loss = act_attack_objective(logits, labels, natural_probs, alpha=hp.robust_alpha,
                                  reduction=hp.attack_loss_reduction)
      (gradient,) = torch.autograd.grad(loss, adversarial)
      adversarial = adversarial.detach() + budget.step_size * gradient.sign()
      adversarial = torch.min(torch.max(adversarial, images - budget.eps),
                              images + budget.eps)
      adversarial = adversarial.clamp(0.0, 1.0)
    self.robust.train()
    return adversarial.detach()

  def step(self, images: torch.Tensor, labels: torch.Tensor,
           noise: torch.Tensor | None = None) -> StepOutput:
    """One ACT step of both models from one snapshot of both (ACT spec, steps 1-5).

    `images` NCHW in [0, 1]; `noise` (same shape) fixes the attack's Gaussian start.
    """
    hp = self.hp
    images, labels = self.to_input(images), labels.to(self.device)
    self.natural.train()
    self.robust.train()
    with self._autocast():
      natural_logits = self.natural(images)
    adversarial = self.attack(images, labels, natural_logits, noise)
    with self._autocast():
      adversarial_logits = self.robust(adversarial)
    natural_loss, natural_metrics = act_model_loss(
        natural_logits, adversarial_logits, labels, alpha=hp.natural_alpha,
        temperature=hp.temperature)
    robust_loss, robust_metrics = act_model_loss(
        adversarial_logits, natural_logits, labels, alpha=hp.robust_alpha,
        temperature=hp.temperature)
    self.natural_optimizer.zero_grad(set_to_none=True)
    self.robust_optimizer.zero_grad(set_to_none=True)
    # The teachers are detached, so these two backward passes touch disjoint parameters.
    (natural_loss + robust_loss).backward()
    self.natural_optimizer.step()
    self.robust_optimizer.step()
    metrics = {**{f"natural/{k}": v for k, v in natural_metrics.items()},
               **{f"robust/{k}": v for k, v in robust_metrics.items()}}
    return StepOutput(metrics, adversarial)


# Timing.


def synchronize(device: torch.device) -> None:
  if device.type == "cuda":
    torch.cuda.synchronize(device)


# The step as a PyTorch user would speed it up.


def compiled_step(trainer: TorchACT) -> Callable[..., StepOutput]:
  """The whole step under `torch.compile`: attack loop, both backward passes and optimisers.

  Dynamo breaks the graph at `torch.autograd.grad`, so the attack's input gradients run as
  compiled segments between breaks.
  """
  return torch.compile(trainer.step)


def capture_step_graph(trainer: TorchACT, images: torch.Tensor, labels: torch.Tensor, *,
                       warmup_steps: int = 3) -> Callable[[], None]:
  """The whole step captured once in a CUDA graph; returns its replay.

  `images` and `labels` are the static inputs every replay reads (copy new data into them to
  train). Warm-up steps run on a side stream first, as CUDA graphs need, so that cuDNN's
  autotuning and the optimisers' lazily created state happen before the capture.
  """
  if trainer.device.type != "cuda":
    raise ValueError("CUDA graphs need a CUDA device")
  if trainer.bf16 and trainer.autocast_cache:
    raise ValueError("capture needs autocast_cache=False: autocast's weight cache breaks it")
  side = torch.cuda.Stream(trainer.device)
  side.wait_stream(torch.cuda.current_stream(trainer.device))
  with torch.cuda.stream(side):
    for _ in range(warmup_steps):
      trainer.step(images, labels)
  torch.cuda.current_stream(trainer.device).wait_stream(side)
  graph = torch.cuda.CUDAGraph()
  with torch.cuda.graph(graph):
    trainer.step(images, labels)
  return graph.replay

