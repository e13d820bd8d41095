"""A detector survives a day of streaming (the reliability issue).

The streaming model runs over a long synthetic stream (noise beds at changing levels,
spoken words, digital silence, clipping bursts), generated block by block and fed as fast
as the model runs: the PyTorch step (``CRNN.init_state/step``) and the ONNX streaming export
through ``runtime/detect.py``'s ``Detector``.  Throughout: no NaN/Inf in any state, every
probability in [0, 1], resident memory flat.  The same probe (a lead-in of background, the
keyword, a tail) is inserted near the start and at the very end: the probability traces
over it must match and the keyword must be detected the same way, so the carried GRU state
has not drifted into a stuck regime.

``make test`` runs a reduced duration (minutes of audio); ``make soak`` (``pytest -m soak
--run-soak``) runs the full 24 hours of audio.

The model: ``checkpoints/student.pt`` when it exists, else a tiny CRNN fitted here in a few
seconds on the tiny synthetic corpus, with a streaming loss (``CRNN.stream_reference`` over
sequences of corpus clips on corpus noise; target 1 while a step's window holds the whole
keyword, 0 while it holds none of it).  Random weights would make "detected" meaningless;
the fitted model is checked to detect the probe's keyword and not the lead-in.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT
from kws_export.checkpoint import load_checkpoint, save_checkpoint
from kws_export.config import CRNNConfig
from kws_export.model import CRNN

RATE = 16000
SETTLE_STEPS = 16              # steps of the probe's lead-in after which earlier audio must not matter
BLOCK_SECONDS = 30.72          # 384 steps of 80 ms: blocks stay step-aligned
REDUCED_SECONDS = 15 * 60.0    # make test
FULL_SECONDS = 24 * 3600.0     # make soak
STUDENT = ROOT / "checkpoints" / "student.pt"


# The model ------------------------------------------------------------------------------------------
@dataclass
class Clips:
    keywords: list[np.ndarray]     # 1 s clips of the keyword (train split)
    spans: list[tuple[int, int]]   # where the keyword is spoken in each
    others: list[np.ndarray]       # 1 s clips of other words
    noises: list[np.ndarray]       # background noise recordings


def load_clips(corpus: Path) -> Clips:
    from training.data import SpeechCommands
    from training.synth import speech_span

    ds = SpeechCommands(corpus, split="train", keyword="sheila")
    clips, labels = ds.load_all(workers=1)
    keywords = [c for c, y in zip(clips, labels) if y == 1]
    others = [c for c, y in zip(clips, labels) if y == 0]
    # The synthetic clips carry a noise floor: -25 dB from the loudest frame finds the word.
    return Clips(keywords, [speech_span(c, floor_db=-25.0) for c in keywords], others, ds.background_noises())


def stream_targets(steps: int, spans: list[tuple[int, int]], spec) -> tuple[torch.Tensor, torch.Tensor]:
    """1 while a step's receptive window holds a whole keyword span, 0 while it holds no
    part of one; steps holding part of one are masked out."""
    ends = (torch.arange(steps) + 1) * spec.step_samples
    starts = ends - spec.window_steps * spec.step_samples - spec.prefix_samples
    target, partial = torch.zeros(steps), torch.zeros(steps, dtype=torch.bool)
    for a, b in spans:
        inside = (starts <= a) & (ends >= b)
        target[inside] = 1.0
        partial |= (starts < b) & (ends > a) & ~inside
    return target, ~partial | (target > 0)


def fit_tiny(clips: Clips, seed: int = 0, iterations: int = 200, batch_size: int = 6, seconds: float = 3.0) -> CRNN:
    """A few seconds of streaming-loss training on stretches of a synthetic day (below) with
    the keyword mixed in: enough to tell the keyword from the background."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    day = SyntheticDay(clips, seed=100 + seed)  # not the soak's own day (seed 1)
    model = CRNN(CRNNConfig(channels=4, hidden=16, gru_layers=1, stride=(4, 8))).train()
    spec = model.stream_spec()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=iterations, pct_start=0.15)
    n = int(seconds * RATE)
    for _ in range(iterations):
        block = day.block()
        audio, spans = [], []
        for _ in range(batch_size):
            at = rng.integers(0, len(block) - n)
            x, where = block[at:at + n].copy(), []
            if rng.random() < 0.6:
                i, at = rng.integers(len(clips.keywords)), int(rng.integers(0, n - RATE))
                x[at:at + RATE] += clips.keywords[i] * 10 ** (rng.uniform(-10, 3) / 20)
                where.append((at + clips.spans[i][0], at + clips.spans[i][1]))
            audio.append(np.clip(x, -1, 1))
            spans.append(where)
        probs = model.stream_reference(torch.from_numpy(np.stack(audio))).clamp(1e-6, 1 - 1e-6)
        target, mask = (torch.stack(t) for t in zip(*(stream_targets(probs.shape[1], w, spec) for w in spans)))
        bce = torch.nn.functional.binary_cross_entropy(probs, target, reduction="none")
        pos, neg = mask & (target > 0), mask & (target == 0)
        loss = bce[neg].mean() + (bce[pos].mean() if pos.any() else 0.0)  # keyword steps weigh as much as all others
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
    return model.eval()


@dataclass
class Trained:
    model: CRNN
    ckpt: Path
    onnx: Path
    threshold: float
    source: str
    clips: Clips
    probe: np.ndarray           # lead-in + keyword + tail, a whole number of steps
    keyword_steps: slice        # the probe's steps whose window holds the keyword


def separates(model: CRNN, probe: np.ndarray, keyword_steps: slice, threshold: float) -> bool:
    """From the initial state: the keyword crosses the threshold, the lead-in does not."""
    with torch.no_grad():
        p = model.stream_reference(torch.from_numpy(probe)[None])[0].numpy()
    return bool(p[keyword_steps].max() >= threshold > p[SETTLE_STEPS:keyword_steps.start].max())


def make_probe(model: CRNN, clips: Clips) -> tuple[np.ndarray, slice]:
    """3.84 s of background, the keyword clip the model is surest of, 1.28 s of background."""
    spec = model.stream_spec()
    step = spec.step_samples
    rng = np.random.default_rng(7)
    noise = clips.noises[0]
    bed = lambda n: 0.02 * np.resize(np.roll(noise, rng.integers(len(noise))), n) / (np.std(noise) + 1e-9)  # noqa: E731
    lead, clip_steps, tail = 64, -(-RATE // step), 16
    best, best_p = None, -1.0
    with torch.no_grad():
        for clip in clips.keywords:
            x = np.concatenate([bed(lead * step), np.pad(clip, (0, clip_steps * step - len(clip)))])
            p = float(model.stream_reference(torch.from_numpy(x.astype(np.float32))[None]).max())
            if p > best_p:
                best, best_p = clip, p
    base = bed((lead + clip_steps + tail) * step)
    base[lead * step: lead * step + len(best)] += best
    return np.clip(base, -1, 1).astype(np.float32), slice(lead - 2, lead + clip_steps + tail)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    from test_synth import build_tiny_corpus

    from kws_export.export_onnx import export_onnx_file

    torch.set_num_threads(1)  # session fixtures run before conftest's per-test autouse fixture
    clips = load_clips(build_tiny_corpus(tmp_path_factory.getbasetemp()))
    d = tmp_path_factory.mktemp("soak-model")
    if STUDENT.is_file():
        ckpt = load_checkpoint(STUDENT)
        model, path, source = ckpt.build_model(), STUDENT, str(STUDENT.relative_to(ROOT))
        threshold = float(ckpt.metadata.get("threshold", 0.5))
    else:
        t0, threshold = time.perf_counter(), 0.5
        for seed in range(3):  # a fit this short is at the mercy of its seed: take the first that separates
            model = fit_tiny(clips, seed)
            probe, keyword_steps = make_probe(model, clips)
            if separates(model, probe, keyword_steps, threshold):
                break
        else:
            pytest.fail("three tiny fits could not tell the keyword from the background")
        path, source = d / "fitted.pt", f"tiny CRNN fitted in {time.perf_counter() - t0:.1f} s (seed {seed})"
        save_checkpoint(path, model, {"threshold": threshold})
    onnx_path = d / "model.stream.onnx"
    export_onnx_file(path, onnx_path, streaming=True)
    probe, keyword_steps = make_probe(model, clips)
    if not separates(model, probe, keyword_steps, threshold):
        # The soak checks health over a long stream (the end detects as the start did), not
        # recall: when this corpus's best keyword clip stays under the checkpoint's strict
        # threshold, detect at the midpoint between the lead-in's and the keyword's peaks.
        with torch.no_grad():
            p = model.stream_reference(torch.from_numpy(probe)[None])[0].numpy()
        threshold = float(p[keyword_steps].max() + p[SETTLE_STEPS:keyword_steps.start].max()) / 2
        source += f", probe threshold {threshold:.3f}"
        assert separates(model, probe, keyword_steps, threshold), source
    # The day's blocks are whole steps of the seminar frontend (hop 160 x time stride 8).
    assert model.stream_spec().step_samples == 1280 and model.config.sample_rate == RATE, source
    return Trained(model, path, onnx_path, threshold, source, clips, probe, keyword_steps)


# The day --------------------------------------------------------------------------------------------
class SyntheticDay:
    """A deterministic endless stream in blocks of ``BLOCK_SECONDS``: a background that changes
    every few seconds (corpus noises at -60..-10 dBFS, or digital silence), words spoken over
    it, and now and then a burst that clips at full scale."""

    def __init__(self, clips: Clips, seed: int = 0):
        self.clips = clips
        self.rng = np.random.default_rng(seed)
        self.block_samples = int(round(BLOCK_SECONDS * RATE))

    def block(self) -> np.ndarray:
        rng, n = self.rng, self.block_samples
        x = np.zeros(n, np.float32)
        at = 0
        while at < n:  # background segments of 1-8 s
            m = min(n - at, int(rng.uniform(1, 8) * RATE))
            if rng.random() > 0.1:  # else digital silence
                noise = self.clips.noises[rng.integers(len(self.clips.noises))]
                start = rng.integers(0, len(noise) - 1)
                seg = np.resize(noise[start:], m)
                x[at:at + m] = seg * (10 ** (rng.uniform(-60, -10) / 20) / (np.std(noise) + 1e-9))
            at += m
        for _ in range(rng.poisson(BLOCK_SECONDS / 4)):  # other words, never the keyword
            clip = self.clips.others[rng.integers(len(self.clips.others))]
            at = rng.integers(0, n - len(clip))
            x[at:at + len(clip)] += clip * 10 ** (rng.uniform(-20, 6) / 20)
        if rng.random() < 0.2:  # a clipping burst: a loud square wave, saturated
            at, m = rng.integers(0, n - RATE), int(rng.uniform(0.1, 1.0) * RATE)
            t = np.arange(m) / RATE
            x[at:at + m] += 3.0 * np.sign(np.sin(2 * np.pi * rng.uniform(100, 2000) * t))
        return np.clip(x, -1.0, 1.0)


def rss_mb() -> float:
    """Resident memory now (not the peak: growth must show)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: the peak is the best available
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if os.uname().sysname == "Darwin" else 2**10)


class TorchEngine:
    """The PyTorch streaming step, one call per block (k steps per call)."""

    def __init__(self, trained: Trained):
        self.model = trained.model
        self.state = self.model.init_state()
        self.step = self.model.stream_spec().step_samples

    def feed(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            p, self.state = self.model.step(torch.from_numpy(x)[None], self.state)
        return p[0].numpy()

    def states(self) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.state.items()}


class OnnxEngine:
    """runtime/detect.py's Detector as a live stream would run it (no history kept).  With
    threshold 0 and no refractory time every step is an event, which hands back each step's
    probability through the public API."""

    def __init__(self, trained: Trained):
        from runtime.detect import Detector

        self.det = Detector(str(trained.onnx), threshold=0.0, refractory_ms=0, keep_history=False)
        self.step = self.det.step_samples

    def feed(self, x: np.ndarray) -> np.ndarray:
        return np.array([e["prob"] for e in self.det.process(x)])

    def states(self) -> dict[str, np.ndarray]:
        return self.det.get_state()


def check(engine, probs: np.ndarray, where: str) -> None:
    assert np.isfinite(probs).all(), f"non-finite probability {where}"
    assert probs.min() >= 0.0 and probs.max() <= 1.0, f"probability outside [0, 1] {where}"
    for name, value in engine.states().items():
        assert np.isfinite(value).all(), f"state {name} holds NaN/Inf {where}"
        if name.startswith("gru_h") or name == "att_out":  # GRU outputs live in [-1, 1]
            assert np.abs(value).max() <= 1.0 + 1e-6, f"state {name} left [-1, 1] {where}"


def feed_checked(engine, x: np.ndarray, where: str) -> np.ndarray:
    probs = engine.feed(np.ascontiguousarray(x, np.float32))
    assert len(probs) == len(x) // engine.step, where
    check(engine, probs, where)
    return probs


def soak(engine, trained: Trained, seconds: float) -> dict:
    """Lead-in + probe, the day, probe again; checks every block, samples memory."""
    day = SyntheticDay(trained.clips, seed=1)
    lead = day.block()[: 8 * engine.step]
    first = feed_checked(engine, np.concatenate([lead, trained.probe]), "at the start")[8:]
    blocks = max(1, int(round((seconds - 2 * len(trained.probe) / RATE) / BLOCK_SECONDS)))
    rss = []
    t0 = time.perf_counter()
    for i in range(blocks):
        feed_checked(engine, day.block(), f"in block {i + 1} of {blocks}")
        rss.append(rss_mb())
    wall = time.perf_counter() - t0
    last = feed_checked(engine, trained.probe, "at the end")
    return {"first": first, "last": last, "rss": np.array(rss), "wall": wall,
            "seconds": blocks * BLOCK_SECONDS + 2 * len(trained.probe) / RATE + len(lead) / RATE}


# The tests ------------------------------------------------------------------------------------------
ENGINES = {"torch": TorchEngine, "onnx": OnnxEngine}
TRACE_TOL = 0.05       # |p(end) - p(start)| around the probe's keyword
ONE_OFF_STEPS = 2       # single rises of resident memory that are the allocator's, not a leak


@pytest.mark.parametrize("seconds", [pytest.param(REDUCED_SECONDS, id="15min"),
                                     pytest.param(FULL_SECONDS, id="24h", marks=pytest.mark.soak)])
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_a_long_stream_stays_healthy_and_detects_at_the_end_as_at_the_start(trained, engine, seconds):
    result = soak(ENGINES[engine](trained), trained, seconds)
    fresh = feed_checked(ENGINES[engine](trained), trained.probe, "from the initial state")
    first, last, ks, thr = result["first"], result["last"], trained.keyword_steps, trained.threshold
    rss = result["rss"]
    warm = max(3, len(rss) // 4)  # the allocator's arenas settle in the first blocks
    assert len(rss) > warm
    growth = steady_growth(rss, warm)
    print(f"\n{engine}: {result['seconds'] / 3600:.2f} h of audio in {result['wall']:.1f} s "
          f"({result['seconds'] / max(result['wall'], 1e-9):.0f}x real time), model: {trained.source}; "
          f"keyword peak: start {first[ks].max():.3f}, end {last[ks].max():.3f}, fresh {fresh[ks].max():.3f}; "
          f"max |end - fresh| around it {np.abs(last - fresh)[ks].max():.1e}; RSS after warm-up "
          f"{rss[:warm].max():.1f} MB, then at most {rss[warm:].max():.1f} MB")
    # A meaningful model: the keyword is detected, the background before it is not.
    assert fresh[ks].max() >= thr > fresh[SETTLE_STEPS:ks.start].max(), (fresh, thr)
    # Around the keyword the same probe gives the same trace after the whole day as near
    # its start and as from the initial state, so the carried state has neither drifted
    # nor got stuck: detected, at the same step (+-1), with the same peak.
    onset = lambda p: int(np.argmax(p[ks] >= thr))  # noqa: E731
    for name, trace in (("start", first), ("end", last)):
        np.testing.assert_allclose(trace[ks], fresh[ks], atol=TRACE_TOL, err_msg=name)
        assert trace[ks].max() >= thr, name
        assert abs(onset(trace) - onset(fresh)) <= 1 and abs(int(np.argmax(trace[ks])) - int(np.argmax(fresh[ks]))) <= 1, name
    # Memory is flat once warm (over the full day 8 MB is 8 bytes per step).
    assert growth < 8.0, rss


def steady_growth(rss: np.ndarray, warm: int, one_off: int = ONE_OFF_STEPS) -> float:
    """MB the resident peak rose after the first ``warm`` samples, less its ``one_off`` largest
    single rises.  A leak rises block after block; the allocator also takes a one-off step
    now and then (glibc's mmap threshold adapts, a new arena is mapped: 11.7 MB seen once in a
    15 min run on a loaded machine), which is not growth."""
    peak = np.maximum.accumulate(np.asarray(rss, dtype=np.float64))
    rises = np.diff(peak[warm - 1:])
    return float(rises.sum() - np.sort(rises)[len(rises) - one_off:].sum()) if len(rises) > one_off else 0.0


def test_steady_growth_ignores_one_off_steps_but_not_a_leak():
    flat = np.full(30, 700.0)
    one_off = flat.copy()
    one_off[15:] += 11.7
    one_off[22:] += 5.0
    leak = 700.0 + 0.4 * np.arange(30)  # ~1 KB per step at 384 steps per block
    assert steady_growth(flat, 7) == 0.0
    assert steady_growth(one_off, 7) == 0.0
    assert steady_growth(leak, 7) == pytest.approx(0.4 * 21)  # 23 rises after warm-up, less the 2 largest
    assert steady_growth(leak, 7) >= 8.0 - 1e-9


def test_two_detectors_in_one_process_never_share_state(trained, tmp_path):
    """Interleaved in random block sizes, two Detectors on the same model (and a third on
    another export of it) each give exactly what they give alone; resetting one leaves the
    others as they were."""
    from kws_export.export_onnx import export_onnx_file
    from runtime.detect import Detector

    four = tmp_path / "four-steps.onnx"
    export_onnx_file(trained.ckpt, four, streaming=True, chunk_ms=320)
    day = SyntheticDay(trained.clips, seed=5)
    streams = {"a": np.concatenate([trained.probe, day.block()[:RATE * 4]]),
               "b": np.concatenate([day.block()[:RATE * 6], trained.probe]),
               "c": np.concatenate([trained.probe[::-1], trained.probe]).copy()}
    models = {"a": trained.onnx, "b": trained.onnx, "c": four}

    def alone(name):
        det = Detector(str(models[name]), threshold=trained.threshold)
        events = det.process(streams[name]) + det.flush()
        return det.probs, [e["time"] for e in events]

    expected = {name: alone(name) for name in streams}
    dets = {name: Detector(str(models[name]), threshold=trained.threshold) for name in streams}
    events = {name: [] for name in streams}
    pos = {name: 0 for name in streams}
    rng = np.random.default_rng(0)
    while any(pos[n] < len(streams[n]) for n in streams):
        name = str(rng.choice(list(streams)))
        size = int(rng.integers(0, 5000))
        events[name] += dets[name].process(streams[name][pos[name]:pos[name] + size])
        pos[name] += size
    for name, det in dets.items():
        events[name] += det.flush()
        np.testing.assert_array_equal(det.probs, expected[name][0], err_msg=name)
        assert [e["time"] for e in events[name]] == expected[name][1], name
    assert expected["a"][1] and expected["b"][1], "the probe's keyword was not detected"

    # Resetting or re-stating one detector leaves the others untouched.
    before = {n: d.get_state() for n, d in dets.items()}
    dets["a"].reset()
    dets["c"].set_state({k: np.zeros_like(v) for k, v in before["c"].items()})
    for k, v in dets["b"].get_state().items():
        np.testing.assert_array_equal(v, before["b"][k])
