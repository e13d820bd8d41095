"""Train the speech-embedding teacher: cached frozen embeddings of augmented 2 s windows, then
the small head in seconds.

Each training example is one 1.99 s window (the head's receptive field, see
``kws_export.embedding``) built from the corpus's 1 s clips: the clip (keyword or not) ends
0-0.3 s before the window's end; in half the windows another (non-keyword) clip of the split
precedes it, so the negatives are multi-word speech and a keyword preceded by speech still
counts; the window then goes through the project's waveform augmentation (speed, shift,
reverberation, background noise, gain).  ``extra_negatives`` (e.g. the corpus's longer
multi-word phrase clips) are windowed the same way.  Computing the frozen embedding costs
~25 ms of CPU per window, so the embeddings of ``views`` augmented windows per clip are
computed once (in worker processes) and cached beside the corpus; the head never sees audio.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from kws_export.embedding import EmbeddingConfig, EmbeddingKWS, Features
from kws_export.errors import KWSError
from kws_export.fileio import atomic_output
from training.augment import AugmentConfig, NoiseBank, augment_waves

CACHE_VERSION = 1


@dataclass
class WindowRecipe:
    views: int = 2  # augmented windows per clip
    tail_s: tuple[float, float] = (0.0, 0.3)  # silence after the clip's end, inside the window
    context_prob: float = 0.5  # another (non-keyword) clip precedes the clip
    seed: int = 0

    def key(self) -> dict:
        return {"views": self.views, "tail_s": list(self.tail_s), "context_prob": self.context_prob, "seed": self.seed}


def place_in_window(clip: np.ndarray, window: int, tail: int, context: np.ndarray | None = None) -> np.ndarray:
    """``clip`` ending ``tail`` samples before the end of a zero window, ``context`` just before it."""
    out = np.zeros(window, np.float32)
    end = window - tail
    start = max(0, end - len(clip))
    out[start:end] = clip[len(clip) - (end - start):]
    if context is not None and start > 0:
        c = context[max(0, len(context) - start):]
        out[start - len(c):start] += c
    return out


def _plan(n_clips: int, labels: np.ndarray, recipe: WindowRecipe, sample_rate: int) -> list[tuple[int, int, int, int]]:
    """(clip, context clip or -1, tail samples, seed) per window, deterministic from the seed."""
    rng = np.random.default_rng(recipe.seed)
    negatives = np.flatnonzero(labels == 0)
    plan = []
    for v in range(recipe.views):
        for i in range(n_clips):
            ctx = int(rng.choice(negatives)) if len(negatives) and rng.random() < recipe.context_prob else -1
            if ctx == i:
                ctx = -1
            tail = int(rng.uniform(*recipe.tail_s) * sample_rate)
            plan.append((i, ctx, tail, int(rng.integers(2**31))))
    return plan


# Worker processes: the clips and the noise bank are inherited (fork), sessions made per worker.
_W: dict = {}


def _pool_worker_init(*args) -> None:
    # A pool worker is ended by the pool, not by the CLI's SIGTERM handling (inherited through fork).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _worker_init(*args)


def _worker_init(clips, noises, config_dict, graphs, augment) -> None:
    torch.set_num_threads(1)
    _W.update(clips=clips, noises=NoiseBank(noises, 32000), config=EmbeddingConfig.from_dict(config_dict),
              features=Features(graphs), augment=augment)


def _embed_batch(batch: list[tuple[int, int, int, int]]) -> np.ndarray:
    cfg: EmbeddingConfig = _W["config"]
    clips = _W["clips"]
    n = cfg.clip_samples
    windows = np.stack([place_in_window(clips[i], n, tail, clips[c] if c >= 0 else None) for i, c, tail, _ in batch])
    if _W["augment"] is not None:
        g = torch.Generator().manual_seed(batch[0][3])
        windows = augment_waves(torch.from_numpy(windows), _W["augment"], _W["noises"], g).numpy()
    f: Features = _W["features"]
    return np.stack([f.clip_embeddings(w, cfg.n_embeddings) for w in windows]).astype(np.float16)


def embed_windows(clips: Sequence[np.ndarray], labels: np.ndarray, noises: Sequence[np.ndarray], config: EmbeddingConfig,
                  graphs: dict[str, bytes], recipe: WindowRecipe, augment: AugmentConfig | None, workers: int = 2,
                  progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings [views * N, n_embeddings, 96] (float16) and labels of the augmented windows."""
    plan = _plan(len(clips), labels, recipe, config.sample_rate)
    batches = [plan[i:i + 32] for i in range(0, len(plan), 32)]
    init = (list(clips), list(noises), config.to_dict(), graphs, augment)
    out: list[np.ndarray] = []
    if workers <= 1:
        _worker_init(*init)
        results = map(_embed_batch, batches)
    else:
        pool = mp.get_context("fork").Pool(workers, initializer=_pool_worker_init, initargs=init)
        results = pool.imap(_embed_batch, batches)
    try:
        done = 0
        for r in results:
            out.append(r)
            done += len(r)
            if progress:
                progress(done, len(plan))
        if workers > 1:
            pool.close()
    finally:
        if workers > 1:
            pool.terminate()
            pool.join()
    y = np.array([labels[i] for i, _, _, _ in plan], np.int64)
    return (np.concatenate(out) if out else np.zeros((0, config.n_embeddings, 96), np.float16)), y


def cached_embeddings(cache_dir: Path, key: dict, compute: Callable[[], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Load the embeddings for ``key`` from ``cache_dir`` or compute and store them atomically."""
    digest = hashlib.sha256(json.dumps({"v": CACHE_VERSION, **key}, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"embeddings-{digest}.npz"
    if path.is_file():
        with np.load(path) as z:
            return z["x"], z["y"]
    x, y = compute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, x=x, y=y)
    return x, y


def train_head(model: EmbeddingKWS, x: np.ndarray, y: np.ndarray, *, l2: float = 20.0, negative_weight: float = 5.0,
               iterations: int = 100, log: Callable[[str], None] | None = None) -> list[dict]:
    """L2-regularised logistic regression on the cached embeddings, solved to convergence
    with full-batch L-BFGS from zero weights: deterministic, no learning rate or epoch count
    to select.  Minimises the weighted mean cross-entropy (keyword windows weighted so the
    classes balance, divided by ``negative_weight``) + ``l2`` * sum of squared weights.

    Strong regularisation is what generalises from synthetic to real speech: on the real dev
    set, l2 from 10 to 30 gave 15/16 real keywords at <= 0.5 false alarms per hour, l2 <= 0.1
    at most 5/16 (docs/training.md)."""
    xt = torch.from_numpy(np.asarray(x, np.float32))
    yt = torch.from_numpy(np.asarray(y, np.float32))
    pos = float(yt.sum())
    if pos == 0 or pos == len(yt):
        raise KWSError("the training windows need both keyword and other windows")
    weight = torch.where(yt > 0, torch.tensor((len(yt) - pos) / pos / negative_weight), torch.tensor(1.0))
    params = list(model.head.parameters())
    with torch.no_grad():
        for p in params:
            p.zero_()
        if len(params) > 2:  # a hidden layer cannot start at zero: a small fixed init instead
            g = torch.Generator().manual_seed(0)
            for p in params[:-2]:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    weights = [m.weight for m in model.head if isinstance(m, torch.nn.Linear)]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iterations, history_size=20, line_search_fn="strong_wolfe")
    history: list[dict] = []
    model.train()

    def closure():
        opt.zero_grad()
        ce = (torch.nn.functional.binary_cross_entropy_with_logits(model(xt), yt, reduction="none") * weight).sum() / weight.sum()
        loss = ce + l2 * sum((w ** 2).sum() for w in weights)
        loss.backward()
        history.append({"evaluation": len(history) + 1, "loss": float(loss.detach()), "cross_entropy": float(ce.detach())})
        return loss

    opt.step(closure)
    model.eval()
    if log:
        log(f"head: {len(history)} evaluations, loss {history[0]['loss']:.4f} -> {history[-1]['loss']:.4f}")
    return history


def corpus_key(root: Path) -> str:
    """Identifies a corpus's content cheaply: its manifest (or file list) hash."""
    manifest = root / "manifest.csv"
    if manifest.is_file():
        return hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]
    names = sorted(str(p.relative_to(root)) + str(p.stat().st_size) for p in root.rglob("*.wav"))
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def cpu_workers(requested: int | None) -> int:
    return max(1, requested if requested else min(2, os.cpu_count() or 1))
