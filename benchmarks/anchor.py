#!/usr/bin/env python3
"""openWakeWord's own pretrained model beside kws-edge exports on the real dev stream (issue 13).

    python benchmarks/anchor.py --keyword alexa                          # openWakeWord's alexa_v0.1.onnx alone
    python benchmarks/anchor.py --keyword alexa --model alexa.stream.onnx [--model ...] [--real DIR]
    python benchmarks/anchor.py --keyword alexa --model M.onnx --no-openwakeword
    python benchmarks/anchor.py --keyword alexa --two-stage student.stream.int8w.onnx teacher.stream.onnx
    python benchmarks/anchor.py --keyword alexa --model M.onnx --no-openwakeword --gain-db -24   # a quieter stream

The stream is the project's real dev stream (``training/real.py``: every speech clip of both
folders, shuffled with ``--seed``, back to back, never reset; ~2.07 h).  Each model hears the
same stream: openWakeWord through its own preprocessing (``openwakeword.model.Model``, ONNX,
fed 1280-sample int16 chunks, one ``predict`` per 80 ms, exactly as its README streams), a
kws-edge streaming export through ``runtime/detect.py``'s ``Detector``.  Detections and hits
are counted by the same rule for all (``training.real.stream_figures``: threshold, then 1 s
refractory; a hit inside a keyword clip or up to 1 s after it).  CPU: process CPU seconds
spent inside the scorer (``time.process_time``), per second of audio, one thread.

openWakeWord is **not** a project dependency, and its pretrained heads are CC BY-NC-SA: used
here only to measure, never shipped.  Install it beside the benchmark only::

    pip install --no-deps openwakeword==0.5.1 && pip install scipy scikit-learn tqdm

``--gain-db G`` scales the whole stream by G dB before every model (clipped at full scale, as
an ADC would): how much a model's figures depend on the recording level alone.

The dev set is read from ``../shared/real`` (or ``--real DIR``); it is never copied or trained on.
Without it the script says so in one line and exits 2.
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # one thread everywhere, before numpy / onnxruntime start their pools
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[_var] = "1"

import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

import click  # noqa: E402
import numpy as np  # noqa: E402

from kws_export.cli_support import run_click  # noqa: E402
from kws_export.errors import KWSError  # noqa: E402
from kws_export.fileio import atomic_output, check_readable, check_writable  # noqa: E402

STEP_SAMPLES = 1280           # openWakeWord's 80 ms frame
SAMPLE_RATE = 16000
OWW_VERSION = "0.5.1"
OWW_DEFAULT_THRESHOLD = 0.5   # openWakeWord's documented default
FIXED_THRESHOLDS = (0.5, 0.9)
INSTALL = (f"pip install --no-deps openwakeword=={OWW_VERSION} && pip install scipy scikit-learn tqdm "
           "(for measuring only: not a kws-edge dependency)")


def log(msg: str) -> None:
    print(f"[anchor] {msg}", file=sys.stderr, flush=True)


# Stream scorers ---------------------------------------------------------------------------------
def to_int16(samples) -> np.ndarray:
    """float audio in [-1, 1] (or int16) -> int16, as openWakeWord is fed (exact for audio read from 16-bit files)."""
    x = np.asarray(samples).reshape(-1)
    if x.dtype == np.int16:
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise KWSError(f"expected float or int16 samples, got {x.dtype}")
    return np.clip(np.round(x.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)


class OpenWakeWordStream:
    """An openWakeWord ``Model`` as a stream scorer (``training.real``'s interface):
    ``process(samples)`` buffers to whole 1280-sample int16 chunks and returns one
    probability per chunk (``model.predict(chunk)[name]``), ``flush()`` pads the last
    partial chunk with silence and scores it.  The model is never reset, as a live stream."""

    step_seconds = STEP_SAMPLES / SAMPLE_RATE
    sample_rate = SAMPLE_RATE

    def __init__(self, model, name: str | None = None, threshold: float = OWW_DEFAULT_THRESHOLD):
        self.model = model
        names = list(getattr(model, "models", {}) or [])
        if name is None:
            if len(names) != 1:
                raise KWSError(f"openWakeWord model holds {len(names)} wake-word models {names}: name the one to score")
            name = names[0]
        self.name = name
        self.threshold = float(threshold)
        self._rest = np.zeros(0, np.int16)

    def _score(self, chunk: np.ndarray) -> float:
        out = self.model.predict(chunk)
        if self.name not in out:
            raise KWSError(f"openWakeWord returned no score for {self.name!r} (got {sorted(out)})")
        return float(out[self.name])

    def process(self, samples) -> np.ndarray:
        x = to_int16(samples)
        if self._rest.size:
            x = np.concatenate([self._rest, x])
        n = x.size // STEP_SAMPLES
        probs = np.array([self._score(x[i * STEP_SAMPLES:(i + 1) * STEP_SAMPLES]) for i in range(n)], np.float32)
        self._rest = x[n * STEP_SAMPLES:].copy()
        return probs

    def flush(self) -> np.ndarray:
        if not self._rest.size:
            return np.zeros(0, np.float32)
        chunk = np.zeros(STEP_SAMPLES, np.int16)
        chunk[:self._rest.size] = self._rest
        self._rest = np.zeros(0, np.int16)
        return np.array([self._score(chunk)], np.float32)


class TimedStream:
    """A stream scorer with the process CPU time spent inside ``process`` / ``flush`` counted."""

    def __init__(self, scorer):
        self.scorer = scorer
        self.cpu_s = 0.0
        self.step_seconds = float(scorer.step_seconds)
        self.threshold = getattr(scorer, "threshold", None)

    def _timed(self, fn, *args) -> np.ndarray:
        t0 = time.process_time()
        out = fn(*args)
        self.cpu_s += time.process_time() - t0
        return np.asarray(out, np.float32)

    def process(self, samples) -> np.ndarray:
        return self._timed(self.scorer.process, samples)

    def flush(self) -> np.ndarray:
        return self._timed(self.scorer.flush)


class ScaledStream:
    """A real stream (``training.real.RealStream``) played ``gain_db`` louder (negative: quieter),
    clipped to [-1, 1]; everything else (spans, order, length) is the stream's own."""

    def __init__(self, stream, gain_db: float):
        self.stream = stream
        self.gain_db = float(gain_db)
        self.factor = np.float32(10.0 ** (self.gain_db / 20.0))

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def pieces(self, dev, piece_samples: int):
        for x in self.stream.pieces(dev, piece_samples):
            yield np.clip(x * self.factor, -1.0, 1.0)


def openwakeword_model_path(keyword: str, given: str | None) -> Path:
    """The pretrained ``<keyword>_v0.1.onnx`` inside the installed wheel (or the given file)."""
    import importlib.util

    if given:
        return check_readable(given, "openWakeWord model")
    try:
        spec = importlib.util.find_spec("openwakeword")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise KWSError(f"openwakeword is not installed: {INSTALL}")
    from training.real import slug

    path = Path(list(spec.submodule_search_locations)[0]) / "resources" / "models" / f"{slug(keyword)}_v0.1.onnx"
    if not path.is_file():
        raise KWSError(f"openwakeword has no pretrained model for {keyword!r} ({path.name} not in the wheel; give --oww-model)")
    return path


def load_openwakeword(path: Path):
    try:
        from openwakeword.model import Model
    except ImportError as exc:
        raise KWSError(f"openwakeword could not be imported ({exc}): {INSTALL}") from None
    try:
        return Model(wakeword_models=[str(path)], inference_framework="onnx")
    except Exception as exc:  # its own ValueErrors, onnxruntime's load errors
        raise KWSError(f"{path}: openWakeWord could not load it ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


# Static costs ---------------------------------------------------------------------------------------
def openwakeword_costs(model_path: Path) -> dict:
    """Parameters (initializers of the mel, embedding and head graphs) and MACs per second
    of audio (one mel call on 1760 samples + one embedding + the head per 80 ms)."""
    from benchmarks.onnx_macs import embedding_step_macs, graph_macs, parameter_count

    base = model_path.parent
    try:
        graphs = {n: (base / f"{n}.onnx").read_bytes() for n in ("melspectrogram", "embedding_model")}
    except OSError:
        from kws_export.embedding import find_graphs

        graphs = find_graphs()
    head = graph_macs(model_path, None, model_path.name)["total"]
    step = embedding_step_macs(graphs, head=head)
    params = {"head": parameter_count(model_path), "frozen": sum(parameter_count(g) for g in graphs.values())}
    return {"params": params["head"] + params["frozen"], "params_detail": params,
            "macs_per_step": step, "macs_per_second": step["total"] * SAMPLE_RATE / STEP_SAMPLES}


def export_costs(path: Path, metadata: dict) -> dict:
    """A kws-edge streaming export: parameters from its model card (else the initializers),
    MACs counted from the graph (Conv / MatMul / Gemm, frontend included) per second of audio."""
    from benchmarks.onnx_macs import graph_macs, parameter_count

    card = metadata.get("kws.model_card")
    if isinstance(card, str):
        try:
            card = json.loads(card)
        except ValueError:
            card = {}
    params = card.get("params") if isinstance(card, dict) else None
    if isinstance(params, dict):
        detail, total = params, int(sum(int(v) for v in params.values()))
    elif isinstance(params, (int, float)):
        detail, total = {"trained": int(params)}, int(params)
    else:
        total = parameter_count(path)
        detail = {"initializers": total}
    try:
        per_call = graph_macs(path, None, path.name)["total"]
    except KWSError as exc:
        log(f"{path.name}: MACs not counted ({exc})")
        per_call = None
    chunk = int(metadata.get("kws.chunk_samples", STEP_SAMPLES))
    rate = int(metadata.get("kws.sample_rate", SAMPLE_RATE))
    return {"params": total, "params_detail": detail,
            "macs_per_second": None if per_call is None else per_call * rate / chunk}


# One model on the stream -------------------------------------------------------------------------
def score_stream(dev, stream, scorer, piece_seconds: float = 60.0, label: str = "") -> tuple[np.ndarray, float]:
    """Per-step probabilities of the whole stream and the CPU seconds the scorer spent."""
    timed = TimedStream(scorer)
    piece = int(round(piece_seconds * stream.sample_rate))
    parts, done, last_log = [], 0.0, time.time()
    for x in stream.pieces(dev, piece):
        parts.append(timed.process(x))
        done += x.size / stream.sample_rate
        if time.time() - last_log > 60:
            log(f"{label}: {done / 60:.0f} of {stream.seconds / 60:.0f} min of audio, "
                f"{timed.cpu_s / max(done, 1e-9):.4f} CPU s per audio s so far")
            last_log = time.time()
    parts.append(timed.flush())
    return np.concatenate(parts), timed.cpu_s


def score_two_stage(dev, stream, det, piece_seconds: float = 60.0) -> tuple[np.ndarray, float]:
    """Event times of a ``runtime.detect.VerifiedDetector`` over the whole stream and its CPU seconds."""
    piece = int(round(piece_seconds * stream.sample_rate))
    events, cpu = [], 0.0
    for x in stream.pieces(dev, piece):
        t0 = time.process_time()
        events += det.process(x)
        cpu += time.process_time() - t0
    t0 = time.process_time()
    events += det.flush()
    cpu += time.process_time() - t0
    return np.array([e["time"] for e in events], np.float64), cpu


def two_stage_figures(times: np.ndarray, stream, threshold: float, verifications: int) -> dict:
    from training.metrics import score_events
    from training.real import TOLERANCE_S

    s = score_events(times, stream.spans, stream.seconds, threshold, TOLERANCE_S).as_dict()
    own = {k: s[k] for k in ("threshold", "hits", "keywords", "recall", "false_alarms", "false_alarms_per_hour",
                             "duplicate_detections", "detections")}
    own["verifications_per_hour"] = verifications / (stream.seconds / 3600)
    return {"own": own, "fixed": {}, "sweep": [], "hours": stream.seconds / 3600, "keywords": len(stream.spans),
            "clips": int(stream.order.size)}


def model_figures(probs: np.ndarray, stream, step_seconds: float, own_threshold: float | None) -> dict:
    from training.real import stream_figures

    figs = stream_figures(probs, stream, step_seconds, own_threshold)
    fixed = {}
    for t in FIXED_THRESHOLDS:
        fixed[f"{t:g}"] = stream_figures(probs, stream, step_seconds, t)["at_threshold"]
    return {"own": figs.get("at_threshold"), "fixed": fixed, "sweep": figs["sweep"], "hours": figs["hours"],
            "keywords": figs["keywords"], "clips": figs["clips"]}


# The table -----------------------------------------------------------------------------------------
def _num(x, fmt: str) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def _ratio(x, base) -> str:
    if x is None or not base:
        return "—"
    r = x / base
    return f"{r:.3g}×" if r < 100 else f"{r:,.0f}×"


def tables_md(results: dict) -> str:
    rows_det, rows_cost = [], []
    models = results["models"]
    base = next((m for m in models if m["kind"] == "openwakeword"), None)
    for m in models:
        f = m["figures"]
        entries = []
        if f["own"] is not None:
            entries.append((f"{f['own']['threshold']:g} ({m['threshold_source']})", f["own"]))
        entries += [(f"{k}", v) for k, v in f["fixed"].items()
                    if f["own"] is None or abs(float(k) - f["own"]["threshold"]) > 1e-9]
        for label, r in entries:
            rows_det.append([m["name"], label, f"{r['hits']}/{r['keywords']}", f"{100 * r['recall']:.1f}%",
                             str(r["false_alarms"]), f"{r['false_alarms_per_hour']:.1f}"])
        for s in f["sweep"]:
            t = s.get("threshold")
            rows_det.append([m["name"], f"lowest with ≤ {s['max_false_alarms_per_hour']:g} FA/h: "
                             + ("none" if t is None else f"{t:g}"),
                             f"{s.get('hits', 0)}/{f['keywords']}", f"{100 * s.get('recall', 0.0):.1f}%",
                             str(s.get("false_alarms", "—")),
                             _num(s.get("false_alarms_per_hour"), ".1f")])
        c = m["costs"]
        rows_cost.append([m["name"], f"{m['cpu_per_audio_s']:.4f}",
                          _ratio(m["cpu_per_audio_s"], base and base["cpu_per_audio_s"]),
                          f"{c['params']:,}" + (f" ({', '.join(f'{k} {v:,}' for k, v in c['params_detail'].items())})"
                                                 if len(c["params_detail"]) > 1 else ""),
                          _num(None if c["macs_per_second"] is None else c["macs_per_second"] / 1e6, ",.1f"),
                          _ratio(c["macs_per_second"], base and base["costs"]["macs_per_second"])])
    s = results["stream"]
    head = [f"# openWakeWord anchor: {results['keyword']!r} on the real dev stream",
            "",
            f"Measured {results['date']} on {results['machine']}; load average at the start "
            f"{results['load_average_at_start']} (CPU time, not wall time, is measured; one thread).  ",
            f"Stream: {s['clips']:,} real speech clips of `{s['dir']}` (both folders), shuffled with seed {s['seed']} and "
            f"played back to back without reset: {s['hours']:.2f} h, {s['keywords']} {results['keyword']!r} clips"
            + (f" (**a subset**: {s['subset']})" if s.get("subset") else "")
            + (f", **played {s['gain_db']:+g} dB** (scaled, clipped at full scale)" if s.get("gain_db") else "") + ".  "
            f"A detection is a probability ≥ threshold, then 1 s refractory; a hit lands inside a keyword clip or up to "
            f"1 s after it, any other detection is a false alarm (FA).  Command: `{results['command']}`.",
            "",
            "| model | threshold | hits | recall | false alarms | FA / h |",
            "|---|---|---|---|---|---|"]
    head += ["| " + " | ".join(r) + " |" for r in rows_det]
    head += ["",
             "CPU: process CPU seconds spent scoring per second of audio (openWakeWord: `Model.predict` per 80 ms "
             "chunk, its own preprocessing; kws-edge: `runtime/detect.py` `Detector.process` per 60 s piece).  "
             "Parameters: every weight of the graphs that run (frozen ones included).  MACs: Conv / MatMul / Gemm "
             "counted from the ONNX graphs' shapes (onnx shape inference) per second of audio.",
             "",
             "| model | CPU s / audio s | × openWakeWord | parameters | MMAC / audio s | × openWakeWord |",
             "|---|---|---|---|---|---|"]
    head += ["| " + " | ".join(r) + " |" for r in rows_cost]
    notes = [f"- `{m['name']}`: {m['source']}" for m in models]
    return "\n".join(head + ["", "Models:", ""] + notes) + "\n"


# The command ------------------------------------------------------------------------------------------
def run(keyword: str, model_paths: tuple[str, ...], real: str | None, oww_model: str | None, use_oww: bool,
        seed: int, negatives: int | None, out: str | None, json_out: str | None, command: str,
        probs_out: str | None = None, two_stage: tuple = (), gain_db: float = 0.0) -> dict:
    from runtime.detect import DetectError, VerifiedDetector
    from training.real import DetectorStream, build_stream, open_real, slug

    if not use_oww and not model_paths and not two_stage:
        raise KWSError("nothing to score: give --model FILE, or drop --no-openwakeword")
    for p in [*model_paths, *(q for pair in two_stage for q in pair)]:
        check_readable(p, "model")
    pairs = []
    for first, verifier in two_stage:
        try:
            det = VerifiedDetector(first, verifier)
        except DetectError as exc:
            raise KWSError(str(exc)) from None
        if slug(det.keyword) != slug(keyword):
            raise KWSError(f"{first}: detects {det.keyword!r}, the benchmark is for {keyword!r}")
        pairs.append((Path(first), Path(verifier), det))
    for p in (out, json_out, probs_out):
        if p:
            check_writable(p)
    if negatives is not None and negatives < 0:
        raise KWSError(f"--negatives must be >= 0, got {negatives}")
    if not math.isfinite(gain_db) or not -96.0 <= gain_db <= 48.0:
        raise KWSError(f"--gain-db must be between -96 and 48 dB, got {gain_db:g}")
    exports = []
    for p in model_paths:
        scorer = DetectorStream(p)
        if slug(scorer.keyword) != slug(keyword):
            raise KWSError(f"{p}: detects {scorer.keyword!r}, the benchmark is for {keyword!r}")
        exports.append((Path(p), scorer))
    oww_path = openwakeword_model_path(keyword, oww_model) if use_oww else None
    oww = load_openwakeword(oww_path) if use_oww else None
    dev = open_real(real, keyword)
    log(f"decoding {len(dev):,} clips of {dev.root}")
    dev.load()
    indices, subset = None, None
    if negatives is not None:
        rng = np.random.default_rng(seed)
        neg = np.flatnonzero(dev.labels == 0)
        pick = rng.choice(neg, size=min(negatives, neg.size), replace=False)
        indices = np.sort(np.concatenate([np.flatnonzero(dev.labels == 1), pick]))
        subset = f"every keyword clip and {pick.size:,} of the {neg.size:,} other clips"
    stream = build_stream(dev, seed, indices)
    if gain_db != 0.0:
        stream = ScaledStream(stream, gain_db)
    log(f"stream: {stream.seconds / 3600:.2f} h, {len(stream.spans)} keyword clips"
        + (f", played {gain_db:+g} dB" if gain_db else ""))
    import onnxruntime
    from benchmarks.report import machine

    mach = machine()
    models, tracks = [], {}
    if oww is not None:
        log(f"scoring openWakeWord {oww_path.name} (about 0.05 CPU s per audio s)")
        scorer = OpenWakeWordStream(oww)
        probs, cpu = score_stream(dev, stream, scorer, label=oww_path.name)
        tracks[f"openWakeWord {oww_path.stem}"] = (probs, scorer.step_seconds)
        models.append({"name": f"openWakeWord {oww_path.stem}", "kind": "openwakeword",
                       "path": f"openwakeword=={OWW_VERSION}: resources/models/{oww_path.name}",
                       "threshold_source": "openWakeWord's default",
                       "source": f"`{oww_path.name}` from the `openwakeword=={OWW_VERSION}` wheel (its head CC BY-NC-SA: "
                                 f"measured, never shipped), `Model(wakeword_models=[...], inference_framework='onnx')`, "
                                 f"1280-sample int16 chunks; onnxruntime {onnxruntime.__version__}",
                       "cpu_s": cpu, "cpu_per_audio_s": cpu / stream.seconds,
                       "figures": model_figures(probs, stream, scorer.step_seconds, scorer.threshold),
                       "costs": openwakeword_costs(oww_path)})
        log(f"openWakeWord: {cpu / stream.seconds:.4f} CPU s per audio s")
    for path, scorer in exports:
        log(f"scoring {path.name} through runtime/detect.py")
        probs, cpu = score_stream(dev, stream, scorer, label=path.name)
        tracks[f"kws-edge {path.name}"] = (probs, scorer.step_seconds)
        meta = dict(scorer.detector.metadata)
        models.append({"name": f"kws-edge {path.name}", "kind": "kws-edge", "path": str(path),
                       "threshold_source": "its kws.threshold",
                       "source": f"`{path}` (kws.arch {meta.get('kws.arch', 'crnn')}, {scorer.detector.steps_per_call} "
                                 f"step(s) per call) through `runtime/detect.py` `Detector`",
                       "cpu_s": cpu, "cpu_per_audio_s": cpu / stream.seconds,
                       "figures": model_figures(probs, stream, scorer.step_seconds, scorer.threshold),
                       "costs": export_costs(path, meta)})
        log(f"{path.name}: {cpu / stream.seconds:.5f} CPU s per audio s")
    for first, verifier, det in pairs:
        name = f"kws-edge two-stage {first.name} + {verifier.name}"
        log(f"scoring {name} through runtime/detect.py VerifiedDetector")
        times, cpu = score_two_stage(dev, stream, det)
        c1, c2 = export_costs(first, dict(det.first.metadata)), export_costs(verifier, dict(det.verifier.metadata))
        steps = stream.seconds * SAMPLE_RATE / det.step_samples
        share = det.verifications * (det.warmup + det.window_steps) / steps  # verifier steps run / steps heard
        macs = None if None in (c1["macs_per_second"], c2["macs_per_second"]) else \
            c1["macs_per_second"] + share * c2["macs_per_second"]
        models.append({"name": name, "kind": "kws-edge", "path": f"{first} + {verifier}",
                       "threshold_source": f"the verifier's kws.threshold; trigger {det.trigger:g}",
                       "source": f"`{first}` proposes at {det.trigger:g}, `{verifier}` replayed over {det.warmup} + "
                                 f"{det.window_steps} steps confirms ({det.verifications:,} verifications, the verifier ran "
                                 f"{100 * share:.1f}% of the steps), `runtime/detect.py` `VerifiedDetector`; MACs: the "
                                 f"first stage's + that share of the verifier's",
                       "cpu_s": cpu, "cpu_per_audio_s": cpu / stream.seconds, "verifier_step_share": share,
                       "figures": two_stage_figures(times, stream, det.verifier_threshold, det.verifications),
                       "costs": {"params": c1["params"] + c2["params"],
                                 "params_detail": {"first stage": c1["params"], "verifier": c2["params"]},
                                 "macs_per_second": macs}})
        log(f"{name}: {cpu / stream.seconds:.5f} CPU s per audio s")
    results = {
        "keyword": keyword, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{mach['cpu']}, {mach['cores']} cores, Python {mach['python']}, onnxruntime {mach['onnxruntime']}",
        "load_average_at_start": mach["load_average_at_start"], "command": command,
        "stream": {"dir": str(real) if real else "../shared/real", "seed": seed, "clips": int(stream.order.size),
                   "hours": stream.seconds / 3600, "keywords": len(stream.spans), "subset": subset,
                   "gain_db": float(gain_db)},
        "models": models,
    }
    md = tables_md(results)
    if json_out:
        with atomic_output(json_out) as tmp:
            tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
    if out:
        with atomic_output(out) as tmp:
            tmp.write_text(md)
    if probs_out:  # the per-step tracks, to count detections by other rules without scoring again
        with atomic_output(probs_out) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, names=np.array(list(tracks)), spans=np.asarray(stream.spans, np.float64),
                                    seconds=np.float64(stream.seconds),
                                    step_seconds=np.array([t for _, t in tracks.values()], np.float64),
                                    **{f"probs_{i}": p for i, (p, _) in enumerate(tracks.values())})
    print(md)
    return results


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--keyword", default="alexa", show_default=True, help="The keyword (its dev-set folder).")
@click.option("--model", "models", multiple=True, type=click.Path(),
              help="A kws-edge streaming ONNX export for the keyword (repeatable).")
@click.option("--two-stage", "two_stage", multiple=True, nargs=2, type=click.Path(), metavar="FIRST VERIFIER",
              help="A two-stage pair (runtime/detect.py --model FIRST --verifier VERIFIER; repeatable).")
@click.option("--real", type=click.Path(), default=None, help="The real dev set (default: ../shared/real).")
@click.option("--oww-model", type=click.Path(), default=None,
              help="openWakeWord model file (default: <keyword>_v0.1.onnx from the installed wheel).")
@click.option("--no-openwakeword", "no_oww", is_flag=True, help="Score only the --model files.")
@click.option("--seed", type=int, default=0, show_default=True, help="Play order of the stream (training/real.py).")
@click.option("--negatives", type=int, default=None,
              help="A quick run: every keyword clip and only N random other clips (not the dev stream's figures).")
@click.option("--gain-db", type=float, default=0.0, show_default=True,
              help="Play the whole stream this many dB louder (negative: quieter), clipped at full scale.")
@click.option("--out", type=click.Path(), default=None, help="Also write the tables to this markdown file.")
@click.option("--json", "json_out", type=click.Path(), default=None, help="Also write every figure as JSON.")
@click.option("--save-probs", "probs_out", type=click.Path(), default=None,
              help="Also save every model's per-step probabilities and the keyword spans (.npz).")
def cli(keyword, models, two_stage, real, oww_model, no_oww, seed, negatives, gain_db, out, json_out, probs_out) -> None:
    """openWakeWord's pretrained model and kws-edge exports, side by side on the real dev stream."""
    argv = sys.argv[1:] if __name__ == "__main__" else []
    if "--save-probs" in argv:  # a scratch output: not part of the command that makes the table
        i = argv.index("--save-probs")
        argv = argv[:i] + argv[i + 2:]
    command = "python benchmarks/anchor.py " + " ".join(argv) if argv else "python benchmarks/anchor.py"
    run(keyword, models, real, oww_model, not no_oww, seed, negatives, out, json_out, command, probs_out, two_stage,
        gain_db)


def main(argv: list[str] | None = None) -> int:
    return run_click(cli, "anchor", argv)


if __name__ == "__main__":
    sys.exit(main())
