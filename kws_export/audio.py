"""Wav I/O for every part of the package: strict reading, band-limited resampling, atomic writing.

``read_wav`` returns float32 mono in [-1, 1] and refuses anything it cannot trust (missing,
empty, truncated, non-audio, NaN/Inf, zero-length) with a one-line KWSError naming the file.
``resample`` is a windowed-sinc (Hann) polyphase resampler with the same kernel as
torchaudio's ``sinc_interp_hann`` (lowpass_filter_width=6, rolloff=0.99), written in numpy so
the Raspberry Pi runtime and training share it without torchaudio.
"""

from __future__ import annotations

import functools
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from kws_export.errors import KWSError
from kws_export.fileio import atomic_output, check_readable


@dataclass(frozen=True)
class AudioSource:
    """Audio made on demand, for calibration (static int8) and verification when the user
    names no files.  kws_export makes none itself: the caller passes one in (the installed
    ``kws-export`` command passes training's synthesized speech, ``training.speech``).

    ``streams(keyword, sample_rate, seconds, seed)`` returns float32 mono streams of
    ``seconds`` each at ``sample_rate``; ``name`` says what they are ("synthesized speech"),
    for metadata and reports."""

    name: str
    streams: Callable[[str, int, float, int], list]


LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99
# Above this many kernel entries the polyphase table is not worth building (co-prime rates
# such as 16001 -> 16000 have 16000 phases); the kernel is then evaluated per output sample.
_MAX_POLYPHASE_ENTRIES = 1 << 21


# Resampling -------------------------------------------------------------------------------
def _reduced(sr_from: int, sr_to: int) -> tuple[int, int]:
    if int(sr_from) != sr_from or int(sr_to) != sr_to or sr_from <= 0 or sr_to <= 0:
        raise KWSError(f"cannot resample from {sr_from} Hz to {sr_to} Hz: rates must be positive integers")
    g = math.gcd(int(sr_from), int(sr_to))
    return int(sr_from) // g, int(sr_to) // g


def _kernel_width(orig: int, new: int) -> tuple[float, int]:
    base_freq = min(orig, new) * ROLLOFF
    return base_freq, math.ceil(LOWPASS_FILTER_WIDTH * orig / base_freq)


def _hann_sinc(t: np.ndarray, base_freq: float, orig: int) -> np.ndarray:
    """Kernel value at ``t`` (in units of the output's cut-off period, already clamped)."""
    window = np.cos(t * math.pi / LOWPASS_FILTER_WIDTH / 2) ** 2
    t = t * math.pi
    safe = np.where(t == 0, 1.0, t)
    return np.where(t == 0, 1.0, np.sin(safe) / safe) * window * (base_freq / orig)


@functools.lru_cache(maxsize=64)
def sinc_resample_kernel(orig: int, new: int) -> tuple[np.ndarray, int]:
    """Polyphase kernel (new, 2*width + orig) for reduced rates orig -> new, and ``width``.

    Row ``p`` holds the taps for output phase ``p``; identical to torchaudio's
    ``_get_sinc_resample_kernel(..., "sinc_interp_hann")`` in float64.
    """
    base_freq, width = _kernel_width(orig, new)
    idx = np.arange(-width, width + orig, dtype=np.float64)[None, :] / orig
    t = np.arange(0, -new, -1, dtype=np.float64)[:, None] / new + idx
    t = np.clip(t * base_freq, -LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
    kernel = _hann_sinc(t, base_freq, orig)
    kernel.setflags(write=False)
    return kernel, width


def _resample_direct(x: np.ndarray, orig: int, new: int, out_len: int) -> np.ndarray:
    """Same kernel evaluated at each output instant (for rate pairs with huge polyphase tables)."""
    base_freq, width = _kernel_width(orig, new)
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(width, width + 1)])
    offsets = np.arange(-width, width + 1)
    out = np.empty(x.shape[:-1] + (out_len,), dtype=np.float64)
    for start in range(0, out_len, 4096):
        j = np.arange(start, min(out_len, start + 4096))
        # Output j sits at input time j*orig/new; exact integer arithmetic for the split.
        base = (j * orig) // new
        frac = (j * orig - base * new) / new
        k = base[:, None] + offsets[None, :]  # input sample indices, (block, taps)
        t = np.clip((offsets[None, :] - frac[:, None]) / orig * base_freq, -LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
        w = _hann_sinc(t, base_freq, orig)  # taps outside the signal read the zero padding
        out[..., start:start + len(j)] = np.einsum("...bt,bt->...b", padded[..., k + width], w)
    return out


def resample(x: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    """Band-limited resampling of ``x`` (..., samples) from ``sr_from`` to ``sr_to`` Hz.

    Output length is ``ceil(n * sr_to / sr_from)`` as in torchaudio; dtype float32.
    """
    x = np.asarray(x)
    orig, new = _reduced(sr_from, sr_to)
    if orig == new:
        return x.astype(np.float32, copy=True)
    n = x.shape[-1]
    out_len = -(-new * n // orig)
    if n == 0:
        return np.zeros(x.shape[:-1] + (0,), dtype=np.float32)
    xd = x.astype(np.float64, copy=False)
    _, width = _kernel_width(orig, new)
    if new * (2 * width + orig) > _MAX_POLYPHASE_ENTRIES:
        return _resample_direct(xd, orig, new, out_len).astype(np.float32)
    kernel, width = sinc_resample_kernel(orig, new)
    padded = np.pad(xd, [(0, 0)] * (x.ndim - 1) + [(width, width + orig)])
    frames = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape[1], axis=-1)[..., ::orig, :]
    out = frames @ kernel.T  # (..., n_frames, new): phase-interleaved output samples
    out = out.reshape(x.shape[:-1] + (-1,))[..., :out_len]
    return np.ascontiguousarray(out, dtype=np.float32)


# Reading ----------------------------------------------------------------------------------
def _check_riff(path: Path) -> None:
    """Refuse a RIFF/WAVE file whose data chunk is shorter than its header says.

    libsndfile silently returns the samples that are there; a half-copied file would then
    train or calibrate on a fragment without anyone noticing.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                available = size - offset - 8
                # 0 and 0xFFFFFFFF are what streaming writers leave when the length is unknown.
                if chunk_size not in (0, 0xFFFFFFFF) and chunk_size > available:
                    raise KWSError(
                        f"{path}: truncated wav file (header declares {chunk_size} data bytes, {available} present)"
                    )
                return
            offset += 8 + chunk_size + (chunk_size & 1)


def _soundfile_reason(exc: Exception) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # libsndfile says "Error opening '<path>': <reason>"; the path is already in our message.
    if "': " in msg:
        msg = msg.split("': ", 1)[1]
    return msg.rstrip(".")


def read_wav(path: str | os.PathLike, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Read an audio file as float32 mono in [-1, 1]; resample to ``sample_rate`` if given.

    Channels are averaged.  Integer formats of any width and float files are accepted;
    float samples beyond full scale are clipped.  Returns ``(audio, rate)``.
    """
    p = check_readable(path, "audio file")
    _check_riff(p)
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError) as exc:
        raise KWSError(f"{p}: not a readable audio file ({_soundfile_reason(exc)})") from None
    if data.shape[0] == 0:
        raise KWSError(f"{p}: audio file contains no samples")
    if not np.isfinite(data).all():
        raise KWSError(f"{p}: audio contains NaN or infinite samples")
    audio = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    audio = np.clip(audio, -1.0, 1.0)
    if sample_rate is not None and sr != sample_rate:
        audio = resample(audio, sr, int(sample_rate))
        sr = int(sample_rate)
    return np.ascontiguousarray(audio, dtype=np.float32), int(sr)


# Writing ----------------------------------------------------------------------------------
def to_pcm16(x: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] -> int16 (clipped, rounded to nearest)."""
    return np.round(np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0) * 32767.0).astype(np.int16)


def write_wav(path: str | os.PathLike, x: np.ndarray, sample_rate: int) -> Path:
    """Write ``x`` ((samples,) or (samples, channels), float in [-1, 1] or int16) as 16-bit PCM wav.

    The file appears only when complete (atomic rename); samples beyond full scale are clipped.
    """
    x = np.asarray(x)
    if x.ndim not in (1, 2) or x.shape[0] == 0:
        raise KWSError(f"{path}: refusing to write audio of shape {tuple(x.shape)} (need (samples,) or (samples, channels))")
    if x.dtype != np.int16:
        if not np.isfinite(x).all():
            raise KWSError(f"{path}: refusing to write audio with NaN or infinite samples")
        x = to_pcm16(x)
    if int(sample_rate) <= 0:
        raise KWSError(f"{path}: invalid sample rate {sample_rate}")
    dest = Path(path)
    with atomic_output(dest) as tmp:
        try:
            sf.write(str(tmp), x, int(sample_rate), format="WAV", subtype="PCM_16")
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise KWSError(f"{dest}: cannot write wav ({_soundfile_reason(exc)})") from None
    return dest
