"""Students distilled from the speech-embedding teacher, streaming-aware.

The teacher costs ~25 ms of CPU per 2 s window (the student ~1 ms), far too much to run in
every training step on 2 CPUs.  So a bank of long training sequences is made once: keyword
clips, the corpus's other words and its multi-word ``_phrases_/`` glued over background
noise (``make_long_sequence``), each sequence augmented as a whole (clip speed/shift/gain
before gluing, room reverberation and microphone EQ after), and the teacher's streaming probability is
computed for every 80 ms step of every sequence (its exported step's exact semantics, the
embedding graph batched).  Both models therefore see the same augmented audio (function
matching).  Each training step then draws sequences from the bank and the student's
never-reset streaming reference (``CRNN.stream_reference``) is trained on

* the teacher's per-step probabilities (binary cross-entropy to soft targets) where the
  student's window holds either the whole keyword or none of it, after the teacher's
  2 s window has filled;
* the hard streaming targets of ``training.stream_train`` (1: whole keyword in the window,
  0: none of one, partial: unscored), positives and negatives weighted equally;
* the ordinary clip loss on augmented 1 s clips, so the offline model stays usable.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
from torch import nn

from kws_export.embedding import STEP_SAMPLES, EmbeddingKWS
from kws_export.errors import KWSError
from training.augment import Augmenter, NoiseBank, make_long_sequence, room_and_microphone
from training.stream_train import StreamingObjective, _masked_mean, step_targets
from training.train import ClipSet, balanced_indices, forward_train

POOL = 48  # clips handed to each sequence


@dataclasses.dataclass
class SequenceBank:
    audio: torch.Tensor  # [N, L] float32
    teacher: torch.Tensor  # [N, steps] the teacher's per-step probabilities
    targets: torch.Tensor  # [N, steps] hard targets of the student's window
    masks: torch.Tensor  # [N, steps] scored steps
    keyword_prob: float  # chance that a slot of a sequence is a keyword
    embeddings: torch.Tensor | None = None  # [N, steps, 96] the teacher's embedding at each student step


def _pad_to(x: torch.Tensor, n: int) -> torch.Tensor:
    return x[:, :n] if x.shape[1] >= n else torch.cat([x, torch.zeros(x.shape[0], n - x.shape[1])], dim=1)


def teacher_steps_per_student_step(student_config) -> int:
    """How many of the teacher's 80 ms steps one student step spans (1 for the seminar
    stride of 8 frames, 2 for 16); a student step that is not a whole number of them has no
    teacher probability to learn from."""
    step = student_config.stride[1] * student_config.hop
    if step % STEP_SAMPLES:
        raise KWSError(f"a student step of {step} samples (conv time stride {student_config.stride[1]} x hop "
                       f"{student_config.hop}) is not a multiple of the embedding teacher's {STEP_SAMPLES}-sample step")
    return step // STEP_SAMPLES


def build_bank(student_config, teacher: EmbeddingKWS, train: ClipSet, phrases: np.ndarray | None, noises,
               augmenter: Augmenter | None, sequences: int, seq_seconds: float, seed: int, keyword_prob: float = 0.3,
               log=None, keep_embeddings: bool = False) -> SequenceBank:
    """``sequences`` augmented long sequences with the teacher's and the hard per-step targets
    (``keep_embeddings``: and the teacher's embedding at each student step)."""
    g = torch.Generator().manual_seed(seed)
    sr = student_config.sample_rate
    bank = NoiseBank(noises, 1)
    clip_aug = None
    if augmenter is not None:
        clip_aug = Augmenter(dataclasses.replace(augmenter.config, noise=False, reverb=False, specaugment=False,
                                                 eq=False), None, sr, seed=seed)
    slot = phrases.shape[1] if phrases is not None and len(phrases) else train.waves.shape[1]
    every = teacher_steps_per_student_step(student_config)
    steps = int(round(seq_seconds * sr)) // (every * STEP_SAMPLES)
    audio, teach, targets, masks, embeddings = [], [], [], [], []
    features = teacher.features()
    t0 = time.perf_counter()
    for s in range(sequences):
        idx = balanced_indices(train.labels, POOL, 0.5, g)
        pool = train.batch(idx)
        if clip_aug is not None:
            pool = clip_aug.waves(pool, g)
        labels = train.labels[idx]
        pool = _pad_to(pool, slot)
        if phrases is not None and len(phrases):
            pick = torch.randint(len(phrases), (POOL // 2,), generator=g)
            pool = torch.cat([pool, torch.from_numpy(phrases[pick.numpy()])])
            labels = torch.cat([labels, torch.zeros(len(pick), dtype=labels.dtype)])
        seq = make_long_sequence(pool, labels, bank, duration_s=seq_seconds, keyword_prob=keyword_prob,
                                 sample_rate=sr, generator=g)
        x = seq.audio[None]
        if augmenter is not None:  # the microphone hears the noise too
            x = room_and_microphone(x, augmenter.config, g, sr)
        x = _pad_to(x, int(round(seq_seconds * sr)))
        e, _, _ = features.stream_embeddings(x[0].numpy())
        # the teacher's step that ends where each student step ends
        p = teacher.stream_from_embeddings(e)[every - 1::every][:steps]
        if keep_embeddings:
            embeddings.append(torch.from_numpy(np.ascontiguousarray(e[every - 1::every][:steps])))
        spans = [(int(a), int(b)) for (a, b), lab in zip(seq.speech.tolist(), seq.labels.tolist()) if lab == 1]
        t, m = step_targets(student_config, steps, spans)
        audio.append(x[0])
        teach.append(torch.from_numpy(np.ascontiguousarray(p)))
        targets.append(t)
        masks.append(m)
        if log and (s + 1) % 50 == 0:
            log(f"distill: teacher on {s + 1}/{sequences} sequences ({time.perf_counter() - t0:.0f} s)")
    return SequenceBank(torch.stack(audio), torch.stack(teach).float(), torch.stack(targets), torch.stack(masks),
                        keyword_prob, torch.stack(embeddings).float() if keep_embeddings else None)


def similarity_loss(student: torch.Tensor, teacher: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Similarity-preserving distillation (Tung & Mori 2019) between two sets of per-step
    features, [M, H] and [M, D]: over ``n`` steps drawn at random (from all the sequences,
    so keyword, word, phrase and noise steps meet), the mean squared difference of the two
    cosine-similarity matrices of the centred features.  The student's 20-wide GRU state and
    the teacher's 96-wide embedding never share a basis; what is copied is which steps the
    embedding, trained on real speech, hears as alike."""
    pick = torch.randperm(len(student), generator=generator)[:n].to(student.device)
    s, t = student[pick], teacher[pick]
    s = nn.functional.normalize(s - s.mean(0), dim=1)
    t = nn.functional.normalize(t - t.mean(0), dim=1)
    return ((s @ s.T - t @ t.T) ** 2).mean()


class EmbeddingStreamKD(StreamingObjective):
    """Streaming distillation from the cached bank (see the module docstring)."""

    def __init__(self, train: ClipSet, noises, augmenter: Augmenter | None, bank: SequenceBank, teacher_warmup: int,
                 sequences: int = 8, clip_weight: float = 0.3, kd_weight: float = 0.5, val_minutes: float = 5.0,
                 similarity_weight: float = 0.0, similarity_steps: int = 512):
        super().__init__(train, noises, augmenter, seq_seconds=bank.audio.shape[1] / 16000, sequences=sequences,
                         clip_weight=clip_weight, teacher=None, kd_weight=0.0, val_minutes=val_minutes)
        self.bank = bank
        self.kd_weight = kd_weight
        self.teacher_warmup = teacher_warmup
        if similarity_weight > 0 and bank.embeddings is None:
            raise KWSError("the similarity loss needs a bank built with keep_embeddings=True")
        self.similarity_weight = similarity_weight
        self.similarity_steps = similarity_steps

    def __call__(self, model, waves, labels, generator):
        logits, _, _ = forward_train(model, waves, self.augmenter, generator)
        clip_loss = nn.functional.cross_entropy(logits, labels)
        pick = torch.randint(len(self.bank.audio), (self.sequences,), generator=generator)
        device = waves.device
        audio = self.bank.audio[pick].to(device)
        target, mask, teacher = (self.bank.targets[pick].to(device), self.bank.masks[pick].to(device),
                                 self.bank.teacher[pick].to(device))
        probs, outs = self.student_stream_outputs(model, audio, generator)
        steps = min(probs.shape[1], target.shape[1])
        probs, target, mask, teacher = probs[:, :steps], target[:, :steps], mask[:, :steps], teacher[:, :steps]
        bce = nn.functional.binary_cross_entropy(probs, target, reduction="none")
        pos, neg = mask & (target > 0.5), mask & (target < 0.5)
        hard = 0.5 * _masked_mean(bce, neg) + 0.5 * _masked_mean(bce, pos)
        kd_mask = mask.clone()
        kd_mask[:, : self.teacher_warmup] = False
        soft = nn.functional.binary_cross_entropy(probs, teacher.clamp(1e-4, 1 - 1e-4), reduction="none")
        kd = 0.5 * _masked_mean(soft, kd_mask & neg) + 0.5 * _masked_mean(soft, kd_mask & pos)
        stream_loss = (1 - self.kd_weight) * hard + self.kd_weight * kd
        loss = self.clip_weight * clip_loss + (1 - self.clip_weight) * stream_loss
        stats = {"clip": clip_loss.item(), "stream": hard.item(), "kd": kd.item()}
        if self.similarity_weight > 0:
            # every step once the teacher's embedding window has filled, keyword or not
            emb = self.bank.embeddings[pick].to(device)[:, self.teacher_warmup:steps]
            sim = similarity_loss(outs[:, self.teacher_warmup:steps].reshape(-1, outs.shape[-1]),
                                  emb.reshape(-1, emb.shape[-1]), self.similarity_steps, generator)
            loss = loss + self.similarity_weight * sim
            stats["sim"] = sim.item()
        return loss, stats

    def describe(self) -> dict:
        return {"objective": "streaming distillation from the speech-embedding teacher (cached sequence bank)",
                "bank_sequences": int(len(self.bank.audio)), "bank_keyword_prob": self.bank.keyword_prob,
                "seq_seconds": self.seq_seconds,
                "sequences_per_step": self.sequences, "clip_weight": self.clip_weight, "kd_weight": self.kd_weight,
                "teacher_warmup_steps": self.teacher_warmup,
                **({"similarity_weight": self.similarity_weight, "similarity_steps": self.similarity_steps}
                   if self.similarity_weight > 0 else {}),
                "targets": "teacher's per-step probability + hard 1/0 where the window holds all/none of a keyword"}
