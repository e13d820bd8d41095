"""Streaming-aware fine-tuning: train the never-reset streaming model on long sequences.

Offline, every clip starts from a zero GRU state; deployed, the GRU runs for hours.  This
objective runs ``CRNN.stream_reference`` (batched and differentiable, exactly the exported
step's semantics) over long sequences of clips glued over background noise
(``training.augment.make_long_batch``) and scores every step:

* target 1 while the step's receptive window (W conv steps plus the conv/frame context)
  holds the whole spoken keyword,
* target 0 while it holds no part of any keyword,
* steps that hold part of a keyword are not scored (neither answer is wrong there).

Positive and negative steps are averaged separately and weighted equally (the streaming
analogue of balanced sampling; the threshold is chosen on validation streams afterwards).
The ordinary clip loss is kept beside it so the offline quality does not drift, and a
teacher's streaming probabilities can be matched as soft targets.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from kws_export.model import CRNN
from training.augment import Augmenter, NoiseBank, make_long_batch, room_and_microphone
from training.evaluate import build_streams, score_streams, streaming_clip_probs
from training.metrics import au_fa_fr
from training.train import ClipSet, Objective, balanced_indices, forward_train, validate

POOL_PER_SEQUENCE = 48  # clips handed to each sequence builder (a random, keyword-rich subset)


def step_targets(config, steps: int, keyword_spans: list[tuple[int, int]], window_ms: float | None = None):
    """(targets, mask) of shape (steps,) for one sequence with keywords spoken over
    ``keyword_spans`` (samples)."""
    from kws_export.streaming import stream_spec

    spec = stream_spec(config, window_ms)
    ends = (torch.arange(steps) + 1) * spec.step_samples
    starts = ends - (spec.window_steps * spec.step_samples + spec.prefix_samples)
    target = torch.zeros(steps)
    touched = torch.zeros(steps, dtype=torch.bool)
    for a, b in keyword_spans:
        if b <= a:
            continue
        inside = (starts <= a) & (ends >= b)
        overlap = (starts < b) & (ends > a)
        target[inside] = 1.0
        touched |= overlap & ~inside
    mask = ~touched | (target > 0)
    return target, mask


class StreamingObjective(Objective):
    def __init__(self, train: ClipSet, noises, augmenter: Augmenter | None, seq_seconds: float = 20.0,
                 sequences: int = 8, clip_weight: float = 0.5, teacher: CRNN | None = None, kd_weight: float = 0.5,
                 keyword_prob: float = 0.4, val_minutes: float = 5.0):
        self.train = train
        self.noises = noises
        self.val_minutes = val_minutes
        self.val_streams = None
        self.bank = NoiseBank(noises, 1)
        self.augmenter = augmenter
        # Clip-level speed/shift/gain before gluing (the spoken span is measured after them),
        # room reverberation over the whole sequence; background noise is the sequence's own.
        self.clip_augmenter = None
        if augmenter is not None:
            cfg = dataclasses.replace(augmenter.config, noise=False, reverb=False, specaugment=False, eq=False)
            self.clip_augmenter = Augmenter(cfg, None, augmenter.sample_rate)
        self.seq_seconds = seq_seconds
        self.sequences = sequences
        self.clip_weight = clip_weight
        self.teacher = teacher.eval() if teacher is not None else None
        if self.teacher is not None:
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.kd_weight = kd_weight if teacher is not None else 0.0
        self.keyword_prob = keyword_prob

    def make_batch(self, model: CRNN, generator: torch.Generator):
        """(audio (B, L), targets (B, steps), mask (B, steps))."""
        c = model.config
        idx = balanced_indices(self.train.labels, self.sequences * POOL_PER_SEQUENCE, 0.5, generator)
        pool = self.train.batch(idx)
        if self.clip_augmenter is not None:
            pool = self.clip_augmenter.waves(pool, generator)
        audio, seqs = make_long_batch(pool, self.train.labels[idx], self.bank, batch_size=self.sequences,
                                      duration_s=self.seq_seconds, generator=generator,
                                      keyword_prob=self.keyword_prob, sample_rate=c.sample_rate)
        if self.augmenter is not None:
            audio = room_and_microphone(audio, self.augmenter.config, generator, c.sample_rate)
        steps = audio.shape[-1] // (c.stride[1] * c.hop)
        targets, masks = [], []
        for s in seqs:
            spans = [(int(a), int(b)) for (a, b), lab in zip(s.speech.tolist(), s.labels.tolist()) if lab == 1]
            t, m = step_targets(c, steps, spans)
            targets.append(t)
            masks.append(m)
        return audio, torch.stack(targets), torch.stack(masks)

    def student_stream(self, model, audio: torch.Tensor, generator) -> torch.Tensor:
        """The student's never-reset streaming probabilities over ``audio``, its log-mel
        through the augmenter's stream features (the VTLP warp when on), clamped for BCE."""
        return self.student_stream_outputs(model, audio, generator)[0]

    def student_stream_outputs(self, model, audio: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``student_stream``'s probabilities and the student's GRU output at every step."""
        features = self.augmenter.stream_features(generator) if self.augmenter is not None else None
        probs, outs = model.stream_reference_outputs(audio, mel_transform=features)
        return probs.clamp(1e-6, 1 - 1e-6), outs

    def __call__(self, model, waves, labels, generator):
        logits, _, _ = forward_train(model, waves, self.augmenter, generator)
        clip_loss = nn.functional.cross_entropy(logits, labels)
        audio, target, mask = self.make_batch(model, generator)
        device = waves.device
        audio, target, mask = audio.to(device), target.to(device), mask.to(device)
        probs = self.student_stream(model, audio, generator)
        bce = nn.functional.binary_cross_entropy(probs, target, reduction="none")
        pos, neg = mask & (target > 0.5), mask & (target < 0.5)
        stream_loss = 0.5 * _masked_mean(bce, neg) + 0.5 * _masked_mean(bce, pos)
        stats = {"clip": clip_loss.item(), "stream": stream_loss.item()}
        if self.teacher is not None:
            self.teacher.to(device)
            with torch.no_grad():
                t_probs = self.teacher.stream_reference(audio).clamp(1e-6, 1 - 1e-6)
            kd = nn.functional.binary_cross_entropy(probs, t_probs)
            stream_loss = (1 - self.kd_weight) * stream_loss + self.kd_weight * kd
            stats["stream_kd"] = kd.item()
        loss = self.clip_weight * clip_loss + (1 - self.clip_weight) * stream_loss
        return loss, stats

    def validate(self, model, val: ClipSet, device) -> dict:
        """What this stage is for decides the kept epoch: detection on long validation
        streams (1 - best event F1), with the mean of the offline and the streaming-clip
        AU-FA-FR as a tie-breaker (both are ~1e-3, far below F1 steps)."""
        offline = validate(model, val, device)
        streaming = au_fa_fr(streaming_clip_probs(model, val, device=device), val.labels)
        if self.val_streams is None:
            self.val_streams = build_streams(val, self.val_minutes, 1, self.noises)
        threshold, score = score_streams(model, self.val_streams, None, device=device)
        model.train()
        return {"au_fa_fr": offline["au_fa_fr"], "loss": offline["loss"], "au_fa_fr_streaming": streaming,
                "stream_f1": score["f1"], "stream_fa_per_hour": score["false_alarms_per_hour"],
                "stream_recall": score["recall"], "threshold": threshold,
                "select": (1.0 - score["f1"]) + 0.5 * (offline["au_fa_fr"] + streaming)}

    def describe(self) -> dict:
        return {"objective": "streaming fine-tuning", "seq_seconds": self.seq_seconds, "sequences": self.sequences,
                "clip_weight": self.clip_weight, "kd_weight": self.kd_weight, "keyword_prob": self.keyword_prob,
                "targets": "1: whole keyword in the step's window; 0: none of one; partial: unscored"}


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    n = mask.sum()
    return (x * mask).sum() / n.clamp_min(1)
