"""The shared training loop: teacher training, distillation and fine-tuning all use `fit`.

CPU-first: the decoded corpus is cached in memory as int16 (exactly what the 16-bit wavs
hold, half the bytes of float32), augmentation runs vectorised on whole batches, and each
epoch draws a class-balanced sample with a generator seeded from (seed, epoch) so that a
resumed run sees exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from kws_export.errors import KWSError
from kws_export.fileio import atomic_output
from kws_export.model import CRNN
from training.metrics import au_fa_fr

STATE_FORMAT = "kws-edge-train-state"


# Data -----------------------------------------------------------------------------------------
@dataclass
class ClipSet:
    """One split held in memory: int16 waveforms [N, samples], labels [N], voice per clip."""

    waves: torch.Tensor
    labels: torch.Tensor
    speakers: list = field(default_factory=list)
    name: str = ""

    def __len__(self) -> int:
        return int(self.labels.numel())

    def batch(self, idx: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        return self.waves[idx].to(device=device, dtype=torch.float32) / 32768.0

    def counts(self) -> tuple[int, int]:
        pos = int(self.labels.sum())
        return pos, len(self) - pos


def clips_from_arrays(waves: np.ndarray | torch.Tensor, labels, speakers=None, name: str = "") -> ClipSet:
    w = torch.as_tensor(np.asarray(waves, dtype=np.float32))
    q = torch.empty(w.shape, dtype=torch.int16)
    for start in range(0, w.shape[0], 1024):  # in blocks: no full-size float temporaries
        block = w[start:start + 1024]
        q[start:start + 1024] = torch.round(block.clamp(-1.0, 32767 / 32768) * 32768.0).to(torch.int16)
    return ClipSet(q, torch.as_tensor(np.asarray(labels), dtype=torch.long), list(speakers or []), name)


def load_clips(root: str | Path, split: str, keyword: str, clip_samples: int = 16000,
               sample_rate: int = 16000, random_split_seed: int | None = None) -> ClipSet:
    """Decode a split of a Speech Commands style folder once, into memory."""
    from training.data import SpeechCommands

    ds = SpeechCommands(root, split=split, keyword=keyword, sample_rate=sample_rate,
                        clip_samples=clip_samples, random_split_seed=random_split_seed)
    if len(ds) == 0:
        raise KWSError(f"{root}: the {split} split holds no clips")
    waves, labels = ds.load_all()
    clips = clips_from_arrays(waves, labels, getattr(ds, "speakers", None), split)
    pos, neg = clips.counts()
    if split == "train" and (pos == 0 or neg == 0):
        raise KWSError(f"{root}: the train split needs both '{keyword}' clips and other words (has {pos} and {neg})")
    return clips


def balanced_indices(labels: torch.Tensor, n: int, keyword_fraction: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` draws (with replacement) where a draw is a keyword clip with probability
    ``keyword_fraction``: the seminar's class-balanced sampling of keyword vs rest."""
    pos = torch.nonzero(labels == 1).flatten()
    neg = torch.nonzero(labels == 0).flatten()
    is_pos = torch.rand(n, generator=generator) < keyword_fraction
    n_pos = int(is_pos.sum())
    out = torch.empty(n, dtype=torch.long)
    out[is_pos] = pos[torch.randint(len(pos), (n_pos,), generator=generator)]
    out[~is_pos] = neg[torch.randint(len(neg), (n - n_pos,), generator=generator)]
    return out


# Options -------------------------------------------------------------------------------------
@dataclass
class TrainOptions:
    epochs: int = 60
    batch_size: int = 256
    lr: float = 3e-4
    weight_decay: float = 1e-5
    keyword_fraction: float = 0.5
    epoch_size: int | None = None  # draws per epoch; None: the size of the train split
    schedule: str = "cosine"  # or "constant" (the seminar's)
    warmup_epochs: float = 1.0
    grad_clip: float = 5.0
    ema: float = 0.0  # per-step decay of an exponential moving average of the weights (0: off)
    seed: int = 0
    threads: int = 2
    device: str = "auto"
    progress: bool = True
    stop_after_epochs: int | None = None  # end this invocation early (resume later)
    # Time box: the epochs (the cap is `epochs`) are fixed after the first one, from its
    # measured time, and shrink if later ones run slower, so that training ends within
    # `time_box_s` of the command's start and the cosine schedule still completes.  None: no box.
    time_box_s: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise KWSError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def seeded(seed: int, *salt: int) -> torch.Generator:
    mixed = seed
    for s in salt:
        mixed = (mixed * 1_000_003 + s) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


# Evaluation of clips ---------------------------------------------------------------------------
@torch.no_grad()
def predict_clips(model: CRNN, clips: ClipSet, batch_size: int = 512, device: torch.device | str = "cpu") -> torch.Tensor:
    """Keyword probability of every clip, offline (one clip at a time, GRU from zero)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(clips), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(clips)))
        out.append(model.keyword_prob(clips.batch(idx, device)).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def validate(model: CRNN, clips: ClipSet, device: torch.device | str = "cpu") -> dict:
    probs = predict_clips(model, clips, device=device)
    p = probs.clamp(1e-7, 1 - 1e-7)
    y = clips.labels.float()
    loss = float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())
    return {"au_fa_fr": au_fa_fr(probs, clips.labels), "loss": loss}


# The loop --------------------------------------------------------------------------------------
class Objective:
    """What a training step minimises.  ``__call__`` returns the loss and a dict of floats
    for the progress bar.  ``after_step``/``after_epoch`` let pruning act on the model;
    ``eligible`` says whether an epoch may become the kept "best" one."""

    def __call__(self, model: CRNN, waves: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
        raise NotImplementedError

    def after_step(self, model: CRNN) -> None:
        pass

    def after_epoch(self, model: CRNN, epoch: int) -> None:
        pass

    def after_resume(self, model: CRNN) -> None:
        pass

    def eligible(self, epoch: int) -> bool:
        return True

    def validate(self, model: CRNN, val: ClipSet, device) -> dict:
        """{"au_fa_fr", "loss", ...}: the kept epoch has the lowest ("select" if given, else
        "au_fa_fr"; then "loss")."""
        return validate(model, val, device)

    def describe(self) -> dict:
        return {}


def lr_lambda(opts: TrainOptions, steps_per_epoch: int) -> Callable[[int], float]:
    total = max(1, opts.epochs * steps_per_epoch)
    warm = max(1, int(opts.warmup_epochs * steps_per_epoch))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if opts.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


@dataclass
class FitResult:
    best_epoch: int
    best_val: dict
    history: list
    train_seconds: float
    finished: bool = True
    epochs: int = 0  # the epochs planned (after a time box fixed them)


def state_path_for(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".state")


def fit(
    model: CRNN,
    objective: Objective,
    train: ClipSet,
    val: ClipSet,
    opts: TrainOptions,
    augmenter,
    state_path: Path | None = None,
    resume: bool = False,
    on_best: Callable[[CRNN, dict], None] | None = None,
    log: Callable[[str], None] = print,
    identity: dict | None = None,
    clock_start: float | None = None,
) -> FitResult:
    """Train ``model`` in place; on return it holds the best-on-validation weights.

    Validation picks the lowest (AU-FA-FR, validation loss): AU-FA-FR alone ties at 0 once
    the synthetic validation set is separated, and the loss then still ranks calibration.
    A state file written after every epoch makes the run resumable (``resume=True``).
    ``clock_start`` (``time.monotonic()``, default: now) is where ``opts.time_box_s`` counts from."""
    clock_start = time.monotonic() if clock_start is None else clock_start
    device = pick_device(opts.device)
    set_threads(opts.threads)
    model.to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=opts.lr,
                                  weight_decay=opts.weight_decay)
    epoch_size = opts.epoch_size or len(train)
    steps_per_epoch = max(1, math.ceil(epoch_size / opts.batch_size))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(opts, steps_per_epoch))
    identity = identity or {}

    start_epoch, best, history, elapsed = 0, None, [], 0.0
    best_state = None
    # With opts.ema the weights that are validated, kept and saved are the moving average:
    # it smooths the step-to-step noise that makes a small streaming model's false alarms
    # jump from one epoch to the next.
    ema = WeightAverage(model, opts.ema) if opts.ema > 0 else None
    if resume and state_path is not None and state_path.exists():
        state = load_state(state_path)
        if state.get("identity") != identity:
            raise KWSError(f"{state_path}: was written by a different run (model/data/options differ); delete it or drop --resume")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history, elapsed = int(state["epoch"]), list(state["history"]), float(state["elapsed"])
        best = state["best"]
        best_state = state["best_state"]
        if ema is not None:
            ema.load(state["ema"])
        objective.after_resume(model)
        if state.get("epochs") is not None and opts.time_box_s is not None:
            # the time box already fixed the epochs (and with them the schedule) in the first invocation
            opts = dataclasses.replace(opts, epochs=int(state["epochs"]))
            scheduler.lr_lambdas = [lr_lambda(opts, steps_per_epoch)]
        log(f"resuming from {state_path} after epoch {start_epoch}")
    elif state_path is not None and state_path.exists():
        log(f"note: {state_path} exists from an earlier run; starting over (use --resume to continue it)")

    boxed = opts.time_box_s is not None
    paces: list[float] = []  # seconds of this invocation's epochs
    stop_at = opts.epochs if not opts.stop_after_epochs else min(opts.epochs, start_epoch + opts.stop_after_epochs)
    epoch = start_epoch
    while epoch < stop_at:
        t0 = time.perf_counter()
        model.train()
        order = balanced_indices(train.labels, epoch_size, opts.keyword_fraction, seeded(opts.seed, epoch))
        g_wave, g = seeded(opts.seed, epoch, 1), seeded(opts.seed, epoch, 2)

        def make_batch(step: int):
            idx = order[step * opts.batch_size:(step + 1) * opts.batch_size]
            waves = train.batch(idx)
            if augmenter is not None:
                waves = augmenter.waves(waves, g_wave)
            return waves, train.labels[idx]

        sums: dict[str, float] = {}
        bar = _progress(range(steps_per_epoch), opts.progress, f"epoch {epoch + 1}/{opts.epochs}")
        # The next batch is augmented in a worker thread while this one trains (torch ops
        # release the GIL).  Each side draws from its own generator, in a fixed order, so
        # the run stays exactly reproducible.
        pool = ThreadPoolExecutor(max_workers=1)
        pending = pool.submit(make_batch, 0)
        for step in bar:
            waves, labels = pending.result()
            if step + 1 < steps_per_epoch:
                pending = pool.submit(make_batch, step + 1)
            waves, labels = waves.to(device), labels.to(device)
            loss, stats = objective(model, waves, labels, g)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if opts.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
            optimizer.step()
            scheduler.step()
            objective.after_step(model)
            if ema is not None:
                ema.update(model)
            stats = {"loss": loss.item(), **stats}
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            if hasattr(bar, "set_postfix"):
                bar.set_postfix({k: f"{v / (step + 1):.4f}" for k, v in sums.items()}, refresh=False)
        pool.shutdown()
        objective.after_epoch(model, epoch)
        raw = ema.swap_in(model) if ema is not None else None
        v = objective.validate(model, val, device)
        seconds = time.perf_counter() - t0
        elapsed += seconds
        record = {"epoch": epoch + 1, **{f"train_{k}": s / steps_per_epoch for k, s in sums.items()},
                  **{f"val_{k}": x for k, x in v.items()}, "lr": scheduler.get_last_lr()[0], "seconds": seconds}
        history.append(record)
        key = (v.get("select", v["au_fa_fr"]), v["loss"])
        improved = objective.eligible(epoch) and (
            best is None or key < (best.get("val_select", best["val_au_fa_fr"]), best["val_loss"]))
        if improved:
            best = record
            best_state = {k: t.detach().cpu().clone() for k, t in model.state_dict().items()}
            if on_best is not None:
                on_best(model, record)
        if raw is not None:
            model.load_state_dict(raw)
        extra = "".join(f"  val {k} {x:.4g}" for k, x in v.items() if k not in ("au_fa_fr", "loss"))
        log(f"epoch {epoch + 1}/{opts.epochs}: loss {record['train_loss']:.4f}  val AU-FA-FR {v['au_fa_fr']:.6f}  "
            f"val loss {v['loss']:.4f}{extra}  {seconds:.1f} s{'  *best' if improved else ''}")
        if boxed:
            # After the first (warm-up) epoch, whose learning rate does not depend on the total,
            # the total is set from the --epochs cap; after later ones it can only shrink, when
            # epochs run slower than before (a busier machine): the pace is the slowest of the
            # last three.
            paces.append(seconds)
            left = opts.time_box_s - (time.monotonic() - clock_start)
            fit_epochs = time_boxed_epochs(left, max(paces[-3:]), epoch + 1, opts.epochs)
            if fit_epochs != opts.epochs:
                log(f"time box: {fit_epochs} epochs fit in the {opts.time_box_s / 60:.1f} min box "
                    f"({max(paces[-3:]):.1f} s per epoch; {'cap' if epoch == 0 else 'was'} {opts.epochs})")
                opts = dataclasses.replace(opts, epochs=fit_epochs)
                scheduler.lr_lambdas = [lr_lambda(opts, steps_per_epoch)]
                stop_at = opts.epochs if not opts.stop_after_epochs else min(opts.epochs, start_epoch + opts.stop_after_epochs)
        if state_path is not None:
            save_state(state_path, {
                "format": STATE_FORMAT, "identity": identity, "epoch": epoch + 1, "epochs": opts.epochs,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "history": history, "elapsed": elapsed,
                "best": best, "best_state": best_state, **({"ema": ema.state} if ema is not None else {}),
            })
        epoch += 1
    if best_state is None:
        raise KWSError("training ended without an eligible epoch (more --epochs needed)")
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(int(best["epoch"]), best, history, elapsed, finished=len(history) >= opts.epochs, epochs=opts.epochs)


def time_boxed_epochs(left_s: float, pace_s: float, done: int, cap: int) -> int:
    """Total epochs when ``done`` have run, ``left_s`` remain in the box and an epoch takes
    ``pace_s``: at least ``done``, at most ``cap``."""
    return max(done, min(cap, done + int(max(0.0, left_s) // max(1e-6, pace_s))))


class WeightAverage:
    """Exponential moving average of a model's floating-point weights, updated after every
    optimizer step (integer buffers are copied)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:  # the CLI checks --ema first; this guards direct callers
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.state = {k: t.detach().clone() for k, t in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, t in model.state_dict().items():
            if t.is_floating_point():
                self.state[k].mul_(self.decay).add_(t.detach(), alpha=1.0 - self.decay)
            else:
                self.state[k].copy_(t)

    def load(self, state: dict) -> None:
        self.state = {k: t.clone() for k, t in state.items()}

    def swap_in(self, model: nn.Module) -> dict:
        """Load the average into ``model``; returns the raw weights to put back."""
        raw = {k: t.detach().clone() for k, t in model.state_dict().items()}
        model.load_state_dict(self.state)
        return raw


def save_state(path: Path, state: dict) -> None:
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise KWSError(f"{path}: not a readable training state ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise KWSError(f"{path}: not a kws-edge training state file")
    return state


def _progress(it, enabled: bool, desc: str):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    # disable=None: bars on a terminal, none in log files
    return tqdm(it, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0, disable=None)


# Objectives ------------------------------------------------------------------------------------
def forward_train(model: CRNN, waves: torch.Tensor, augmenter, generator, logmel: torch.Tensor | None = None):
    """Waveforms -> (logits, attention, logmel) with SpecAugment applied to the log-mel."""
    if logmel is None:
        logmel = model.frontend(waves)
        if augmenter is not None:
            logmel = augmenter.spec(logmel, generator)
    logits, attention = model.forward_features(logmel, return_attention=True)
    return logits, attention, logmel


class HardLabels(Objective):
    """Cross-entropy on the labels: the teacher's objective."""

    def __init__(self, augmenter, label_smoothing: float = 0.0):
        self.augmenter = augmenter
        self.label_smoothing = label_smoothing

    def __call__(self, model, waves, labels, generator):
        logits, _, _ = forward_train(model, waves, self.augmenter, generator)
        loss = nn.functional.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return loss, {}

    def describe(self) -> dict:
        return {"objective": "cross-entropy", "label_smoothing": self.label_smoothing}

