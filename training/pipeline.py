"""What the training commands do, end to end: load the corpus into memory, build the model
and objective, run the shared loop, pick the decision threshold on validation streams,
evaluate on the test split and write the checkpoint with its model-card metadata."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import shlex
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kws_export.checkpoint import load_checkpoint, save_checkpoint
from kws_export.config import CRNNConfig
from kws_export.errors import KWSError
from kws_export.fileio import sha256_file
from kws_export.embedding import EmbeddingKWS
from kws_export.model import CRNN
from training.distill import Distillation, MagnitudePruner
from training.evaluate import LongStream, build_streams, evaluate_model, recommend_threshold
from training.train import (
    ClipSet,
    HardLabels,
    Objective,
    TrainOptions,
    fit,
    load_clips,
    pick_device,
    set_threads,
    state_path_for,
)

DEFAULT_KEYWORD = "sheila"
SYNTH_RECIPE = "synth.json"


# Corpus --------------------------------------------------------------------------------------------
@dataclass
class Corpus:
    root: Path
    keyword: str
    split_seed: int | None
    noises: list
    recipe: dict
    splits: dict

    def get(self, split: str, config: CRNNConfig) -> ClipSet:
        if split not in self.splits:
            self.splits[split] = load_clips(self.root, split, self.keyword, config.clip_samples, config.sample_rate,
                                            self.split_seed)
        return self.splits[split]


def corpus_keyword(root: Path) -> str | None:
    p = root / SYNTH_RECIPE
    if p.is_file():
        try:
            return json.loads(p.read_text()).get("keyword")
        except (OSError, ValueError):
            return None
    return None


def open_corpus(root: Path, keyword: str | None, split_seed: int | None, sample_rate: int = 16000) -> Corpus:
    if not root.exists():
        raise KWSError(f"{root}: data folder not found (make one with `kws-train synth --keyword sheila --out {root}`)")
    if not root.is_dir():
        raise KWSError(f"{root}: is a file, not a folder (expected a Speech Commands style folder)")
    keyword = keyword or corpus_keyword(root) or DEFAULT_KEYWORD
    recipe: dict = {"corpus": str(root), "random_split_seed": split_seed}
    p = root / SYNTH_RECIPE
    if p.is_file():
        try:
            synth = json.loads(p.read_text())
        except ValueError:
            raise KWSError(f"{p}: not valid JSON") from None
        recipe["synth"] = {k: synth.get(k) for k in ("generator", "keyword", "seed", "per_word", "keyword_count",
                                                      "clips", "voices_used", "engines", "noise_seconds")}
        recipe["synth_command"] = (f"kws-train synth --keyword {shlex.quote(str(synth.get('keyword')))} --out {shlex.quote(str(root))} "
                                   f"--per-word {synth.get('per_word')} --keyword-count {synth.get('keyword_count')} "
                                   f"--seed {synth.get('seed')}")
        phr = synth.get("phrases") if isinstance(synth.get("phrases"), dict) else {"count": 0}
        recipe["synth_command"] += f" --phrases {int(phr.get('count') or 0)}"
        if phr.get("count"):
            recipe["synth_command"] += (f" --phrase-seconds {phr.get('seconds')} --near-fraction {phr.get('near_fraction')}"
                                        f" --vocabulary {(phr.get('vocabulary') or {}).get('source', 'auto')}")
        if synth.get("engines") and synth.get("engines") != ["espeak", "flite"]:
            recipe["synth_command"] += f" --engines {','.join(synth['engines'])}"
        if "holdout_engines" in synth:
            recipe["synth_command"] += f" --holdout-engine {(synth['holdout_engines'] or ['none'])[0]}"
    from training.data import SpeechCommands

    ds = SpeechCommands(root, split="train", keyword=keyword, sample_rate=sample_rate, random_split_seed=split_seed)
    noises = [np.asarray(n, dtype=np.float32) for n in ds.background_noises()]
    return Corpus(root, keyword, split_seed, noises, recipe, {})


# Helpers -------------------------------------------------------------------------------------------


def plain(obj):
    """Metadata as JSON-able builtins only: checkpoints are read with weights_only=True,
    which refuses numpy scalars and other objects."""
    def default(o):
        if isinstance(o, (np.integer,)):
            return int(o)
        if isinstance(o, (np.floating,)):
            return float(o)
        if isinstance(o, (np.ndarray, torch.Tensor)):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not JSON-able metadata: {type(o).__name__}")

    return json.loads(json.dumps(obj, default=default))


def json_safe(obj):
    """NaN/Inf (e.g. recall on a stream without keywords) become null: strict JSON."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def command_line(argv: list[str]) -> str:
    return shlex.join(argv)


def check_out(path: Path, what: str = "a checkpoint path") -> None:
    """Fail before any work if ``path`` cannot be written (the write itself is atomic later)."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise KWSError(f"{path}: is a directory, expected {what}")
    if not parent.is_dir():
        raise KWSError(f"{path}: output directory {parent} does not exist")
    try:  # permission bits do not tell root the truth (read-only mounts, /sys): try it
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
    except OSError as exc:
        raise KWSError(f"{path}: cannot write output ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def read_checkpoint(path: Path):
    """load_checkpoint without torch's multi-line warnings about refused pickles: the
    KWSError it raises already says what is wrong, in one line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_checkpoint(path)


def train_options(kw: dict) -> TrainOptions:
    return TrainOptions(
        epochs=kw["epochs"], batch_size=kw["batch_size"], lr=kw["lr"], weight_decay=kw["weight_decay"],
        keyword_fraction=kw["keyword_fraction"], epoch_size=kw["epoch_size"], schedule=kw["schedule"],
        seed=kw["seed"], threads=kw["threads"], device=kw["device"], progress=not kw["no_progress"],
        stop_after_epochs=kw.get("stop_after_epochs"), ema=kw.get("ema") or 0.0,
        time_box_s=None if kw.get("time_box") is None else 60.0 * kw["time_box"],
    )


def validate_options(kw: dict) -> None:
    if kw["epochs"] < 1:
        raise KWSError("--epochs must be at least 1")
    if kw["batch_size"] < 1:
        raise KWSError("--batch-size must be at least 1")
    if kw.get("time_box") is not None and not kw["time_box"] > 0:
        raise KWSError("--time-box must be a positive number of minutes")
    if not 0.0 < kw["keyword_fraction"] < 1.0:
        raise KWSError("--keyword-fraction must be between 0 and 1")
    if kw["lr"] <= 0:
        raise KWSError("--lr must be positive")
    if not 0.0 <= (kw.get("ema") or 0.0) < 1.0:
        raise KWSError("--ema must be in [0, 1) (0: off)")


def machine() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "processor": platform.machine(),
            "cpu_count": __import__("os").cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --select-negatives streams at most this much of its recordings each epoch (~3 s per hour for
# the small student on one core); in 2 h one false alarm is 0.5 per hour.
SELECT_NEGATIVES_HOURS = 2.0


class RealSelection(Objective):
    """``objective`` with the kept epoch chosen on real recordings (offline, no gradient).

    ``by="clips"``: the dev set's clip AU-FA-FR (ties: the synthetic validation loss).
    ``by="stream"``: the model as deployed, on the real stream (every speech clip, never reset):
    one minus the mean recall at <= 0.5, 1 and 2 false alarms per hour (the lowest thresholds
    that keep it there), plus the clip AU-FA-FR, which only breaks ties (~1e-5 against recall
    steps of 1/48 for 16 keywords).  Averaging three operating points makes the choice less a
    matter of one keyword than any single point would.
    ``by="negatives"``: for recordings that never say the keyword (``open_negatives``): the
    thresholds that keep them at <= 0.5 / 1 / 2 false alarms per hour, and at each the share of
    the synthetic validation keywords found (offline clip probability at or above it); one
    minus their mean (ties: the synthetic validation AU-FA-FR).  No real keyword is needed, so
    real keyword figures measured afterwards are not biased by the choice.  Over the epochs of
    "alexa" and "view glass" students this share ranked epochs much as the real keywords found
    did (Spearman 0.53-0.97, the synthetic validation's own score 0.34-0.84), and its pick
    found as many or more real keywords (docs/training.md).  ``indices``: the recordings
    streamed (default: all).  Everything else is the wrapped objective's."""

    BY = {"clips": "real dev set clip AU-FA-FR",
          "stream": "real dev set stream: 1 - mean recall at <= 0.5 / 1 / 2 FA/h (+ clip AU-FA-FR)",
          "negatives": "real negatives: 1 - mean synthetic validation keyword recall at the thresholds that keep real "
                       "recordings without the keyword at <= 0.5 / 1 / 2 FA/h (+ synthetic validation AU-FA-FR)"}

    def __init__(self, objective: Objective, dev, by: str = "clips", indices=None):
        if by not in self.BY:
            raise KWSError(f"unknown real-speech selection {by!r} (use {', '.join(self.BY)})")
        self.inner = objective
        self.dev = dev
        self.by = by
        self.indices = indices

    def __call__(self, model, waves, labels, generator):
        return self.inner(model, waves, labels, generator)

    def after_step(self, model) -> None:
        self.inner.after_step(model)

    def after_epoch(self, model, epoch: int) -> None:
        self.inner.after_epoch(model, epoch)

    def after_resume(self, model) -> None:
        self.inner.after_resume(model)

    def eligible(self, epoch: int) -> bool:
        return self.inner.eligible(epoch)

    def validate(self, model, val, device) -> dict:
        from training.evaluate import streamer_for
        from training.real import crnn_clip_scorer, evaluate_clips, evaluate_stream
        from training.train import predict_clips

        v = dict(self.inner.validate(model, val, device))
        was_training = model.training
        tie = v["au_fa_fr"]
        if self.by in ("clips", "stream"):
            r = evaluate_clips(self.dev, crnn_clip_scorer(model, device), extra_negatives=False)
            v["real_au_fa_fr"] = tie = r["au_fa_fr"]
            v["select"] = r["au_fa_fr"]
        if self.by != "clips":
            s = evaluate_stream(self.dev, streamer_for(model, device), indices=self.indices)
            if self.by == "negatives":
                synthetic = predict_clips(model, val, device=device).numpy()[val.labels.numpy() == 1]
            recalls = []
            for row in s["sweep"]:
                fa, t = row["max_false_alarms_per_hour"], row["threshold"]
                if self.by == "negatives":
                    found = float((synthetic >= t).mean()) if t is not None and synthetic.size else 0.0
                    v[f"real_threshold_at_{fa:g}_fa_h"] = t if t is not None else 1.0  # none of the grid: detect nothing
                    v[f"syn_recall_at_real_{fa:g}_fa_h"] = found
                    recalls.append(found)
                else:
                    v[f"real_stream_hits_at_{fa:g}_fa_h"] = row["hits"]
                    recalls.append(row["recall"])
            if self.by == "stream":
                v["real_stream_keywords"] = s["keywords"]
            v["select"] = 1.0 - float(np.mean(recalls)) + tie
        model.train(was_training)
        return v

    def describe(self) -> dict:
        return {**self.inner.describe(), "select": self.BY[self.by], "real_dev_set": self.dev.describe()}


# The shared tail of every training command -----------------------------------------------------------
@dataclasses.dataclass
class Selection:
    """The real recordings a run keeps its epoch by (``--select-real`` / ``--select-negatives``),
    opened and loaded before any training work, so a bad folder costs nothing."""

    dev: object
    by: str
    indices: object = None  # the recordings streamed ("negatives"; None: all)
    note: str = ""

    def wrap(self, objective: Objective) -> "RealSelection":
        return RealSelection(objective, self.dev, self.by, self.indices)


def open_selection(kw: dict, keyword: str, sample_rate: int) -> Selection | None:
    """--select-real / --select-negatives as a ``Selection`` (None when neither is given);
    both at once, or a folder without usable recordings: a ``KWSError``."""
    if kw.get("select_real") is not None and kw.get("select_negatives") is not None:
        raise KWSError("--select-real and --select-negatives exclude each other: give one")
    if kw.get("select_real") is not None:
        from training.real import open_real

        dev = open_real(real_dir_of(kw["select_real"]), keyword, sample_rate)
        by = kw.get("select_real_by") or "clips"
        return Selection(dev.load(), by, None, f"the best {RealSelection.BY[by]} ({dev.root}, "
                                               f"{len(dev.clip_indices)} clips, scored only)")
    if kw.get("select_negatives") is not None:
        from training.real import open_negatives, sample_hours

        dev = open_negatives(kw["select_negatives"], keyword, sample_rate).load()
        indices = sample_hours(dev, SELECT_NEGATIVES_HOURS)
        return Selection(dev, "negatives", indices,
                         f"the best {RealSelection.BY['negatives']} ({kw['select_negatives']}, {len(indices)} of "
                         f"{len(dev)} recordings, {dev.lengths()[indices].sum() / dev.sample_rate / 3600:.2f} h, "
                         f"scored only)")
    return None


def train_and_save(model: CRNN, objective: Objective, corpus: Corpus, opts: TrainOptions, augmenter, kw: dict,
                   argv: list[str], role: str, extra_meta: dict, selection: Selection | None = None) -> dict:
    """``selection``: from ``open_selection``, which each ``run_*`` calls before its own
    set-up work (a bank, a teacher)."""
    out: Path = kw["out"]
    check_out(out)
    config = model.config
    if selection is not None:
        objective = selection.wrap(objective)
        log(f"{role}: keeping the epoch with {selection.note}")
    train = corpus.get("train", config)
    val = corpus.get("validation", config)
    test = corpus.get("test", config)
    for name, clips in (("validation", val), ("test", test)):
        pos, neg = clips.counts()
        if pos == 0 or neg == 0:
            raise KWSError(f"{corpus.root}: the {name} split needs both keyword clips and other words (has {pos} and {neg})")
    log(f"{role}: {len(train)} train / {len(val)} validation / {len(test)} test clips, keyword '{corpus.keyword}', "
        f"{sum(p.numel() for p in model.parameters())} parameters, device {pick_device(opts.device)}, "
        f"{torch.get_num_threads()} threads")
    identity = plain({"role": role, "config": config.to_dict(), "data": corpus.recipe,
                "objective": objective.describe(), "augment": augmenter.describe() if augmenter else None,
                "options": {k: v for k, v in opts.as_dict().items()
                            if k not in ("epochs", "progress", "threads", "device", "stop_after_epochs", "time_box_s")}})
    command = command_line(argv)
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    base = {
        "keyword": corpus.keyword, "role": role, "setting": kw.get("setting") or (role if role == "teacher" else Path(out).stem),
        "data": corpus.recipe, "command": command, "argv": list(argv),
        "created": started, "machine": machine(),
        "training": {"options": opts.as_dict(), "objective": objective.describe(),
                     "augment": augmenter.describe() if augmenter else None},
        **extra_meta,
    }

    def on_best(m: CRNN, record: dict) -> None:
        save_checkpoint(out, m, plain({**base, "training": {**base["training"], "status": "in progress", "best": record}}))

    t0 = time.perf_counter()
    result = fit(model, objective, train, val, opts, augmenter, state_path=state_path_for(out), resume=kw["resume"],
                 on_best=on_best, log=log, identity=identity, clock_start=kw.get("started"))
    if not result.finished:
        log(f"{role}: stopped after epoch {len(result.history)} of {result.epochs}; {out} holds the best epoch so far "
            f"({result.best_epoch}); continue with the same command plus --resume")
        return {}
    log(f"{role}: best epoch {result.best_epoch} (validation AU-FA-FR {result.best_val['val_au_fa_fr']:.6f}); "
        f"trained {result.train_seconds / 60:.1f} min; choosing the threshold and evaluating ...")
    device = pick_device(opts.device)
    threshold, val_stream = recommend_threshold(model, build_streams(val, kw["val_minutes"], kw["seed"] + 1, corpus.noises),
                                                device=device)
    metrics = evaluate_model(model, test, build_streams(test, kw["eval_minutes"], kw["seed"], corpus.noises), threshold,
                             device=device, threshold_source="validation streams, best event F1")
    model.cpu()
    meta = {
        **base,
        "training": {**base["training"], "status": "done", "best": result.best_val, "epochs_run": len(result.history),
                     "epochs_planned": result.epochs,
                     "history": result.history},
        "training_time_s": round(result.train_seconds, 1),
        "wall_time_s": round(time.perf_counter() - t0, 1),
        "threshold": threshold,
        "validation_stream": val_stream,
        "metrics": metrics,
    }
    meta = plain(meta)
    save_checkpoint(out, model, meta)
    summary = {k: metrics[k] for k in ("au_fa_fr", "au_fa_fr_streaming", "frr_at_1pct_far", "streaming_recall",
                                       "false_alarms_per_hour", "threshold", "params", "macs_per_second_network",
                                       "int8_bytes")}
    log(f"{role}: wrote {out}: " + json.dumps(summary))
    return meta


# Commands ------------------------------------------------------------------------------------------
def _arch(kw: dict, keyword: str) -> CRNNConfig:
    return CRNNConfig(channels=kw["channels"], hidden=kw["hidden"], gru_layers=kw["gru_layers"],
                      kernel=tuple(kw["kernel"]), stride=tuple(kw["stride"]), keyword=keyword,
                      level_norm_ms=kw.get("level_norm_ms", 0))


def _setup(kw: dict, keyword: str | None = None) -> Corpus:
    validate_options(kw)
    kw.setdefault("started", time.monotonic())  # where --time-box counts from
    set_threads(kw["threads"])
    return open_corpus(kw["data"], kw.get("keyword") or keyword, kw["split_seed"])


def augment_config(kw: dict):
    """The AugmentConfig the --aug-* / --no-* options describe (everything off with --no-augment)."""
    from training.augment import AugmentConfig

    if kw.get("no_augment"):
        return AugmentConfig.none()
    return AugmentConfig(**{k[4:]: (tuple(v) if isinstance(v, (list, tuple)) else v)
                            for k, v in kw.items() if k.startswith("aug_")})


def make_augmenter(kw: dict, noises: list, sample_rate: int):
    from training.augment import Augmenter

    return Augmenter(augment_config(kw), noises, sample_rate, seed=kw["seed"])


def run_teacher(kw: dict, argv: list[str]) -> dict:
    check_out(kw["out"])
    init, extra = _init_from(kw.get("init_path"))
    corpus = _setup(kw, init.config.keyword if init else None)
    torch.manual_seed(kw["seed"])
    model = init.build_model().train() if init else CRNN(_arch(kw, corpus.keyword))
    selection = open_selection(kw, corpus.keyword, model.config.sample_rate)
    augmenter = make_augmenter(kw, corpus.noises, model.config.sample_rate)
    objective = HardLabels(augmenter, kw["label_smoothing"])
    return train_and_save(model, objective, corpus, train_options(kw), augmenter, kw, argv, "teacher", extra, selection)


def _init_from(path: Path | None):
    """(checkpoint, metadata naming it) for --init, or (None, {})."""
    if path is None:
        return None, {}
    return read_checkpoint(path), {"init": {"path": str(path), "sha256": sha256_file(Path(path))}}


def load_teacher(path: Path) -> tuple[CRNN, dict]:
    ckpt = read_checkpoint(path)
    return ckpt.build_model(), {"path": str(path), "sha256": sha256_file(Path(path)),
                                "config": ckpt.config.to_dict(), "metrics": ckpt.metadata.get("metrics")}


def run_distill(kw: dict, argv: list[str]) -> dict:
    check_out(kw["out"])
    if not 0.0 <= kw["alpha"] <= 1.0:
        raise KWSError("--alpha must be between 0 and 1")
    if kw["temperature"] <= 0:
        raise KWSError("--temperature must be positive")
    if not 0.0 < kw["bank_keyword_prob"] < 1.0:
        raise KWSError("--bank-keyword-prob must be between 0 and 1 (exclusive)")
    if kw["kd_similarity"] < 0:
        raise KWSError("--kd-similarity must be >= 0")
    if not 0.0 <= kw["prune"] < 1.0:
        raise KWSError("--prune must be in [0, 1)")
    teacher, parent = load_teacher(kw["teacher_path"])
    corpus = _setup(kw, teacher.config.keyword)
    selection = open_selection(kw, corpus.keyword, teacher.config.sample_rate)
    torch.manual_seed(kw["seed"])
    init, init_extra = _init_from(kw["init_path"])
    if isinstance(teacher, EmbeddingKWS):
        return _run_embedding_distill(kw, argv, teacher, parent, corpus, init, init_extra, selection)
    if kw["kd_similarity"] > 0:
        raise KWSError("--kd-similarity needs the embedding teacher (a CRNN teacher has no embedding to match)")
    if init is not None:
        model = init.build_model().train()
    else:
        model = CRNN(_arch(kw, corpus.keyword).replace(n_mels=teacher.config.n_mels, n_fft=teacher.config.n_fft,
                                                       hop=teacher.config.hop, sample_rate=teacher.config.sample_rate))
    pruner = None
    if kw["prune"] > 0:
        pruner = MagnitudePruner(kw["prune"], kw["prune_epochs"] or max(1, kw["epochs"] // 2))
    augmenter = make_augmenter(kw, corpus.noises, model.config.sample_rate)
    attention_weight = kw["attention_weight"] if kw["attention_kd"] else 0.0
    objective = Distillation(teacher, augmenter, kw["temperature"], kw["alpha"], attention_weight, pruner)
    extra = {"parent_teacher": parent, **init_extra}
    return train_and_save(model, objective, corpus, train_options(kw), augmenter, kw, argv, "student", extra, selection)


def _run_embedding_distill(kw: dict, argv: list[str], teacher: EmbeddingKWS, parent: dict, corpus: Corpus, init,
                           init_extra: dict, selection: Selection | None) -> dict:
    """A CRNN student from the speech-embedding teacher: streaming distillation on a bank of
    long augmented sequences whose teacher probabilities are computed once."""
    from training.data import load_phrases
    from training.embedding_distill import EmbeddingStreamKD, build_bank, teacher_steps_per_student_step

    if kw["attention_kd"] or kw["prune"] > 0:
        raise KWSError("--attention-kd and --prune need a CRNN teacher (the embedding teacher has no attention to match)")
    model = init.build_model().train() if init is not None else CRNN(_arch(kw, corpus.keyword))
    # no soft target until the teacher's window has filled: n_embeddings of its steps, in student steps
    warmup = -(-teacher.config.n_embeddings // teacher_steps_per_student_step(model.config))
    augmenter = make_augmenter(kw, corpus.noises, model.config.sample_rate)
    train = corpus.get("train", model.config)
    phrases = None
    if corpus.split_seed is None:
        phrases, _ = load_phrases(corpus.root, "train", model.config.sample_rate)
    t0 = time.perf_counter()
    log(f"student: the teacher on {kw['bank_sequences']} sequences of {kw['seq_seconds']:g} s "
        f"({0 if phrases is None else len(phrases)} phrase clips in the pool) ...")
    bank = build_bank(model.config, teacher, train, phrases, corpus.noises, augmenter, kw["bank_sequences"],
                      kw["seq_seconds"], kw["seed"], keyword_prob=kw["bank_keyword_prob"], log=log,
                      keep_embeddings=kw["kd_similarity"] > 0)
    log(f"student: sequence bank ready in {time.perf_counter() - t0:.0f} s")
    objective = EmbeddingStreamKD(train, corpus.noises, augmenter, bank, warmup,
                                  kw["sequences"], kw["clip_weight"], kw["alpha"], kw["val_minutes"],
                                  similarity_weight=kw["kd_similarity"])
    opts = train_options(kw)
    extra = {"parent_teacher": parent, **init_extra}
    return train_and_save(model, objective, corpus, opts, augmenter, kw, argv, "student", extra, selection)


def run_finetune_stream(kw: dict, argv: list[str]) -> dict:
    from training.stream_train import StreamingObjective

    check_out(kw["out"])
    ckpt = read_checkpoint(kw["ckpt"])
    model = ckpt.build_model().train()
    corpus = _setup(kw, ckpt.config.keyword)
    selection = open_selection(kw, corpus.keyword, model.config.sample_rate)
    torch.manual_seed(kw["seed"])
    teacher, parent = (None, None)
    if kw["teacher_path"] is not None:
        teacher, parent = load_teacher(kw["teacher_path"])
    augmenter = make_augmenter(kw, corpus.noises, model.config.sample_rate)
    train = corpus.get("train", model.config)
    objective = StreamingObjective(train, corpus.noises, augmenter, kw["seq_seconds"], kw["sequences"],
                                   kw["clip_weight"], teacher, kw["kd_weight"])
    opts = train_options(kw)
    opts.epoch_size = kw["steps_per_epoch"] * opts.batch_size
    extra = {"finetuned_from": {"path": str(kw["ckpt"]), "sha256": sha256_file(Path(kw["ckpt"]))},
             "parent_teacher": ckpt.metadata.get("parent_teacher") or parent}
    return train_and_save(model, objective, corpus, opts, augmenter, kw, argv, ckpt.metadata.get("role", "student"), extra,
                          selection)


def real_dir_of(value: str | None) -> str | None:
    """--real's value as a folder for training.real.open_real (None: the default folder)."""
    return None if value in (None, "") else value


def _embedding_clip_eval(model: EmbeddingKWS, corpus: Corpus, split: str) -> dict:
    """The embedding model on a synthetic split: each clip at the end of its window."""
    from training.data import SpeechCommands
    from training.metrics import au_fa_fr, frr_at_far
    from training.real import embedding_clip_scorer, score_clips

    ds = SpeechCommands(corpus.root, split=split, keyword=corpus.keyword, random_split_seed=corpus.split_seed)
    clips, labels = ds.load_all()
    probs = score_clips(embedding_clip_scorer(model), list(clips))
    frr, _ = frr_at_far(probs, labels, 0.01)
    return {"split": split, "clips": int(len(labels)), "au_fa_fr": au_fa_fr(probs, labels), "frr_at_1pct_far": frr}


def run_eval(kw: dict) -> dict:
    if kw.get("out") is not None:
        check_out(kw["out"], "a JSON file path")
    use_real = kw.get("real") is not None or kw.get("onnx") is not None
    if kw.get("data") is None and not use_real:
        raise KWSError("give --data (a synthetic corpus) and/or --real [DIR] (the real-speech dev set)")
    if kw.get("patience") is not None and not kw["patience"] >= 1:
        raise KWSError("--patience must be a whole number of steps >= 1")
    if kw.get("patience") is not None and not use_real:
        raise KWSError("--patience applies to the real stream: add --real [DIR]")
    if kw.get("real_max_fa") is not None:
        if kw["threshold"] is not None:
            raise KWSError("--threshold and --real-max-fa both choose the threshold: give one")
        if not kw["real_max_fa"] >= 0:
            raise KWSError("--real-max-fa must be >= 0 false alarms per hour")
        if not use_real:
            raise KWSError("--real-max-fa chooses the threshold on the real stream: add --real [DIR]")
    if kw.get("verifier") is not None:
        if kw.get("onnx") is None:
            raise KWSError("--verifier confirms what a first-stage streaming export proposes: add --onnx FIRST.onnx")
        if kw.get("no_real_stream"):
            raise KWSError("--verifier is measured on the real stream: drop --no-real-stream")
    elif kw.get("trigger") is not None:
        raise KWSError("--trigger needs --verifier")
    if kw.get("trigger") is not None and not 0.0 <= kw["trigger"] <= 1.0:
        raise KWSError(f"--trigger {kw['trigger']} is not a probability")
    set_threads(kw["threads"])
    ckpt = read_checkpoint(kw["ckpt"])
    model = ckpt.build_model()
    keyword = kw.get("keyword") or ckpt.config.keyword
    device = pick_device(kw["device"])
    corpus = open_corpus(kw["data"], keyword, kw["split_seed"]) if kw.get("data") is not None else None
    if use_real:  # bad --real / --onnx fail before any long work
        from training.real import evaluate_real, open_real

        dev = open_real(real_dir_of(kw.get("real")), corpus.keyword if corpus else keyword, model.config.sample_rate)
    threshold, source = kw["threshold"], "--threshold"
    if threshold is None and isinstance(ckpt.metadata.get("threshold"), (int, float)):
        threshold, source = float(ckpt.metadata["threshold"]), "checkpoint metadata"
    if threshold is None and corpus is not None and kw.get("real_max_fa") is None:
        val = corpus.get("validation", model.config)
        threshold, _ = recommend_threshold(model, build_streams(val, 10.0, kw["seed"] + 1, corpus.noises), device=device)
        source = "validation streams, best event F1"
    real_result = None
    if use_real:
        own = kw.get("onnx") is not None and kw["threshold"] is None  # the ONNX file's kws.threshold
        real_result = evaluate_real(model, dev, None if own else threshold, onnx=kw.get("onnx"),
                                    stream=not kw.get("no_real_stream"), seed=kw["seed"], device=device,
                                    choose_fa_per_hour=kw.get("real_max_fa"), threads=kw["threads"],
                                    patience=kw.get("patience"))
        if kw.get("real_max_fa") is not None:
            threshold, source = real_result["threshold"], real_result["threshold_source"]
        elif own and "stream" in real_result:
            real_result["threshold_source"] = f"{kw['onnx']}: kws.threshold"
        else:
            real_result["threshold_source"] = source
        if kw.get("verifier") is not None:
            from training.real import VERIFY_TRIGGER, evaluate_verified

            trigger = VERIFY_TRIGGER if kw.get("trigger") is None else float(kw["trigger"])
            real_result["verified"] = evaluate_verified(dev, kw["onnx"], kw["verifier"], seed=kw["seed"], trigger=trigger,
                                                        choose_fa_per_hour=kw.get("real_max_fa"), threads=kw["threads"])
    if kw.get("save_threshold"):
        if kw.get("real_max_fa") is None:
            raise KWSError("--save-threshold stores the threshold --real-max-fa chooses: add --real-max-fa")
        meta = dict(ckpt.metadata)
        meta.update(threshold=float(threshold), threshold_source=source)
        if kw.get("patience") is not None:  # the threshold was chosen with it: exports carry both
            meta["patience"] = int(kw["patience"])
        else:
            meta.pop("patience", None)
        meta["metrics"] = {**(meta.get("metrics") or {}), "real": real_result}
        save_checkpoint(kw["ckpt"], model, plain(json_safe(meta)))
        log(f"eval: stored threshold {threshold:.3f} ({source}) in {kw['ckpt']}")
    head = {"checkpoint": str(kw["ckpt"]), "keyword": corpus.keyword if corpus else keyword}
    if corpus is None:
        return json_safe(plain({**head, "threshold": threshold, "threshold_source": source, "real": real_result}))
    if ckpt.is_embedding:
        out = {**head, "threshold": threshold, "threshold_source": source, **_embedding_clip_eval(model, corpus, kw["split"])}
        if real_result is not None:
            out["real"] = real_result
        return json_safe(plain(out))
    clips = corpus.get(kw["split"], model.config)
    streams: list[LongStream] = build_streams(clips, kw["stream_minutes"], kw["seed"], corpus.noises)
    result = evaluate_model(model, clips, streams, threshold, device=device, threshold_source=source)
    out = {**head, **result}
    if real_result is not None:
        out["real"] = real_result
    return json_safe(plain(out))
