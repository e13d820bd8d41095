"""Knowledge distillation of a small student from the teacher, and magnitude pruning.

* Dark knowledge (Hinton et al.): KL between the teacher's and the student's class
  distributions softened at temperature T (scaled by T^2 so its gradients keep their size),
  mixed with the hard-label cross-entropy: ``alpha * KD + (1 - alpha) * CE``.
* Attention KD: KL between the teacher's and the student's attention distributions over
  time.  With the same conv time kernel/stride both have the same number of steps; otherwise
  the teacher's distribution is resampled (linear interpolation, renormalised) to the
  student's time axis.
* Teacher and student see the very same augmented batch (including the SpecAugment masks
  when their frontends match): distillation works best when the teacher is consistent.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kws_export.model import CRNN
from training.train import Objective, forward_train


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    t = temperature
    return nn.functional.kl_div(
        nn.functional.log_softmax(student_logits / t, dim=-1),
        nn.functional.log_softmax(teacher_logits / t, dim=-1),
        reduction="batchmean", log_target=True,
    ) * (t * t)


def resample_distribution(p: torch.Tensor, steps: int) -> torch.Tensor:
    """(batch, T) distribution over time -> (batch, steps), still summing to one."""
    if p.shape[-1] == steps:
        return p
    q = nn.functional.interpolate(p.unsqueeze(1), size=steps, mode="linear", align_corners=True).squeeze(1)
    q = q.clamp_min(0)
    return q / q.sum(-1, keepdim=True).clamp_min(1e-12)


def attention_kd_loss(student_attention: torch.Tensor, teacher_attention: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) between attention distributions over time."""
    target = resample_distribution(teacher_attention, student_attention.shape[-1])
    return nn.functional.kl_div(student_attention.clamp_min(1e-8).log(), target, reduction="batchmean")


def same_frontend(a: CRNN, b: CRNN) -> bool:
    keys = ("n_mels", "sample_rate", "n_fft", "hop")
    return all(getattr(a.config, k) == getattr(b.config, k) for k in keys)


class Distillation(Objective):
    def __init__(self, teacher: CRNN, augmenter, temperature: float = 2.0, alpha: float = 0.7,
                 attention_weight: float = 0.0, pruner: "MagnitudePruner | None" = None):
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.augmenter = augmenter
        self.temperature = temperature
        self.alpha = alpha
        self.attention_weight = attention_weight
        self.pruner = pruner

    def __call__(self, model, waves, labels, generator):
        logits, attention, logmel = forward_train(model, waves, self.augmenter, generator)
        self.teacher.to(waves.device)
        with torch.no_grad():
            t_logmel = logmel if same_frontend(model, self.teacher) else self.teacher.frontend(waves)
            t_logits, t_attention = self.teacher.forward_features(t_logmel, return_attention=True)
        kd = kd_loss(logits, t_logits, self.temperature)
        ce = nn.functional.cross_entropy(logits, labels)
        loss = self.alpha * kd + (1.0 - self.alpha) * ce
        stats = {"kd": kd.item(), "ce": ce.item()}
        if self.attention_weight > 0:
            att = attention_kd_loss(attention, t_attention)
            loss = loss + self.attention_weight * att
            stats["att"] = att.item()
        return loss, stats

    def after_step(self, model):
        if self.pruner is not None:
            self.pruner.apply(model)

    def after_epoch(self, model, epoch):
        if self.pruner is not None:
            self.pruner.update(model, epoch)

    def after_resume(self, model):
        if self.pruner is not None:
            self.pruner.masks_from_zeros(model)

    def eligible(self, epoch):
        return self.pruner is None or self.pruner.done(epoch)

    def describe(self) -> dict:
        d = {"objective": "distillation", "temperature": self.temperature, "alpha": self.alpha,
             "attention_kd_weight": self.attention_weight}
        if self.pruner is not None:
            d["pruning"] = self.pruner.describe()
        return d


class MagnitudePruner:
    """Gradual magnitude pruning (Zhu & Gupta, 2017) of every weight matrix and conv kernel,
    layer by layer so that no layer is emptied: sparsity follows
    ``amount * (1 - (1 - e / ramp)^3)`` and is final after ``ramp_epochs`` epochs; pruned
    weights are held at zero after every optimizer step.  Only epochs at the final
    sparsity may become the kept best checkpoint."""

    def __init__(self, amount: float, ramp_epochs: int):
        if not 0.0 < amount < 1.0:
            raise ValueError("pruning amount must be in (0, 1)")
        self.amount = amount
        self.ramp_epochs = max(1, ramp_epochs)
        self.masks: dict[str, torch.Tensor] = {}

    @staticmethod
    def _weights(model: nn.Module):
        return [(n, p) for n, p in model.named_parameters() if p.dim() >= 2]

    def sparsity_at(self, epoch: int) -> float:
        frac = min(1.0, (epoch + 1) / self.ramp_epochs)
        return self.amount * (1.0 - (1.0 - frac) ** 3)

    def done(self, epoch: int) -> bool:
        return epoch + 1 >= self.ramp_epochs

    @torch.no_grad()
    def update(self, model: nn.Module, epoch: int) -> None:
        s = self.sparsity_at(epoch)
        for name, p in self._weights(model):
            k = int(math.floor(s * p.numel()))
            if k <= 0:
                continue
            cut = p.abs().flatten().kthvalue(k).values
            mask = p.abs() > cut
            self.masks[name] = mask
            p.mul_(mask)

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        for name, p in self._weights(model):
            if name in self.masks:
                p.mul_(self.masks[name].to(p.device))

    @torch.no_grad()
    def masks_from_zeros(self, model: nn.Module) -> None:
        self.masks = {n: p != 0 for n, p in self._weights(model) if bool((p == 0).any())}

    def describe(self) -> dict:
        return {"method": "gradual magnitude, per layer", "amount": self.amount, "ramp_epochs": self.ramp_epochs}
