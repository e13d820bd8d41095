"""``kws-train teacher --arch embedding``: the speech-embedding teacher end to end.

Corpus -> cached embeddings of augmented 2 s windows (``training.embedding_train``) -> the
head, trained in seconds -> synthetic validation/test figures (each clip at the end of its
window, no augmentation) -> the decision threshold -> optional real-speech figures -> the
checkpoint (the frozen graphs embedded, the model card in its metadata).

The threshold: with ``--real`` the lowest one that keeps the real dev stream within
``--real-max-fa`` false alarms per hour (choosing on the dev set is allowed; nothing trains
on it); otherwise the lowest one at which at most 0.1% of the synthetic validation negatives
are accepted.
"""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path

import numpy as np
import torch

from kws_export.checkpoint import save_checkpoint
from kws_export.embedding import GRAPHS, EmbeddingConfig, EmbeddingKWS, find_graphs, frozen_graphs_card
from kws_export.errors import KWSError
from training.augment import AugmentConfig
from training.embedding_train import (
    WindowRecipe, cached_embeddings, corpus_key, cpu_workers, embed_windows, train_head,
)
from training.metrics import au_fa_fr, frr_at_far
from training.pipeline import augment_config, check_out, command_line, json_safe, log, machine, open_corpus, plain, real_dir_of

VAL_FAR = 0.001


def _augment(kw: dict) -> AugmentConfig | None:
    if kw.get("no_augment"):
        return None
    cfg = augment_config(kw)
    cfg.specaugment = False  # the frozen embedding sees waveforms only
    return cfg


def _split(corpus, split: str, sample_rate: int, phrases: bool):
    """The split's word clips and (``phrases``) its ``_phrases_/`` multi-word negatives."""
    from training.data import SpeechCommands, load_phrases

    ds = SpeechCommands(corpus.root, split=split, keyword=corpus.keyword, sample_rate=sample_rate,
                        random_split_seed=corpus.split_seed)
    clips, labels = ds.load_all()
    clips, labels = list(clips), list(labels)
    if phrases and corpus.split_seed is None:  # phrases carry the corpus's own voice split
        px, _ = load_phrases(corpus.root, split, sample_rate)
        clips += list(px)
        labels += [0] * len(px)
    return clips, np.asarray(labels, dtype=np.int64)


def clip_figures(probs: np.ndarray, labels: np.ndarray) -> dict:
    frr, thr = frr_at_far(probs, labels, 0.01)
    frr01, thr01 = frr_at_far(probs, labels, VAL_FAR)
    return {"au_fa_fr": au_fa_fr(probs, labels), "frr_at_1pct_far": frr, "frr_at_0.1pct_far": frr01,
            "threshold_at_0.1pct_far": thr01, "clips": int(len(labels)), "keyword_clips": int(labels.sum())}


def run_embedding_teacher(kw: dict, argv: list[str]) -> dict:
    t0 = time.perf_counter()
    out: Path = kw["out"]
    check_out(out)
    if kw["views"] <= 0 or kw["iterations"] <= 0 or not kw["l2"] >= 0 or not kw["negative_weight"] > 0:
        raise KWSError("--views and --iterations must be positive, --l2 >= 0 and --negative-weight > 0")
    torch.set_num_threads(max(1, int(kw["threads"])))
    corpus = open_corpus(kw["data"], kw.get("keyword"), kw["split_seed"])
    graphs = find_graphs()
    config = EmbeddingConfig(keyword=corpus.keyword, hidden=int(kw["head_hidden"]))
    augment = _augment(kw)
    recipe = WindowRecipe(views=int(kw["views"]), seed=int(kw["seed"]))
    workers = cpu_workers(kw.get("workers"))
    cache = Path(kw.get("cache") or (corpus.root / ".cache"))
    base_key = {"corpus": corpus_key(corpus.root), "keyword": corpus.keyword, "split_seed": corpus.split_seed,
                "graphs": GRAPHS, "n_embeddings": config.n_embeddings}

    def windows(split: str, rec: WindowRecipe, aug: AugmentConfig | None, phrases: bool):
        key = {**base_key, "split": split, "recipe": rec.key(), "augment": aug.to_dict() if aug else None,
               "phrases": phrases}

        def compute():
            clips, labels = _split(corpus, split, config.sample_rate, phrases)
            log(f"teacher: embedding {len(clips) * rec.views} {split} windows ({workers} workers)")
            return embed_windows(clips, labels, corpus.noises, config, graphs, rec, aug, workers)

        return cached_embeddings(cache, key, compute)

    x, y = windows("train", recipe, augment, phrases=True)
    log(f"teacher: {len(y)} training windows ({int(y.sum())} keyword) after {time.perf_counter() - t0:.0f} s")
    torch.manual_seed(kw["seed"])
    model = EmbeddingKWS(config, graphs)
    history = train_head(model, x, y, l2=kw["l2"], negative_weight=kw["negative_weight"], iterations=kw["iterations"],
                         log=lambda m: log(f"teacher: {m}"))
    clean = WindowRecipe(views=1, tail_s=(0.0, 0.0), context_prob=0.0, seed=kw["seed"])
    metrics: dict = {}
    with torch.no_grad():
        for split in ("validation", "test"):
            xs, ys = windows(split, clean, None, phrases=False)
            p = torch.sigmoid(model(torch.from_numpy(xs.astype(np.float32)))).numpy()
            metrics[split] = clip_figures(p, ys)
    threshold = float(max(0.5, min(0.999, metrics["validation"]["threshold_at_0.1pct_far"])))
    source = f"synthetic validation clips: lowest threshold accepting <= {VAL_FAR:.1%} of the negatives"
    if kw.get("real") is not None:
        from training.real import evaluate_real, open_real

        dev = open_real(real_dir_of(kw["real"]), corpus.keyword, config.sample_rate)
        r = evaluate_real(model, dev.load(), None, choose_fa_per_hour=kw["real_max_fa"])
        threshold, source = float(r["threshold"]), r["threshold_source"]
        metrics["real"] = r
    meta = {
        "keyword": corpus.keyword, "role": "teacher", "arch": "embedding", "name": kw.get("setting") or "embedding teacher",
        "threshold": threshold, "threshold_source": source, "metrics": json_safe(metrics),
        "data_recipe": {**corpus.recipe, "windows": recipe.key(), "augment": augment.to_dict() if augment else None,
                        "training_windows": int(len(y)), "training_keyword_windows": int(y.sum())},
        "frozen_graphs": frozen_graphs_card(),
        "train": {"solver": "L-BFGS, full batch, from zero", "l2": kw["l2"], "iterations": kw["iterations"],
                  "negative_weight": kw["negative_weight"], "seed": kw["seed"], "history": history},
        "command": command_line(argv), "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "seconds": round(time.perf_counter() - t0, 1),
    }
    save_checkpoint(out, model, plain(meta))
    log(f"teacher: wrote {out} in {time.perf_counter() - t0:.0f} s (threshold {threshold:.3f})")
    return meta
