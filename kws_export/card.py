"""What an export's ``kws.model_card`` carries of its checkpoint's metrics.

The checkpoint keeps the full record (per-split figures, real-speech sweeps and curves, the
dev-set listing); an export carries its headline, and ``kws.source_sha256`` names the
checkpoint that holds the rest.  A student's int8 streaming file is held to 20 KB, and the
full record alone would be 3.6 KB of it.
"""

from __future__ import annotations

from typing import Any


# Figures the file itself or its config gives (sizes, MACs): not repeated in the card.
DERIVABLE = {"costs", "params", "fp32_bytes", "int8_bytes", "macs_per_second_network", "macs_per_second_frontend",
             "macs_per_second_frontend_export"}
SPLITS = {"train", "validation", "test"}


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _short(value: Any) -> Any:
    """Floats to 4 significant digits (figures, not state: nothing computes with them)."""
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        return float(f"{value:.4g}")
    return value


def real_summary(real: dict) -> dict[str, Any]:
    """The headline of a checkpoint's real-speech record (``training.real``): clip AU-FA-FR and
    recalls, and the stream's hits and false alarms per hour at the threshold."""
    clips = real.get("clips") if isinstance(real.get("clips"), dict) else {}
    stream = real.get("stream") if isinstance(real.get("stream"), dict) else {}
    at = stream.get("at_threshold") if isinstance(stream.get("at_threshold"), dict) else {}
    picks = [(clips, "clips_", ("au_fa_fr", "recall_at_0.1pct_far", "recall_at_1pct_far", "keyword_clips")),
             (at, "stream_", ("hits", "keywords", "false_alarms_per_hour")), (stream, "stream_", ("hours",)),
             (real, "", ("threshold", "threshold_source"))]
    return {prefix + k: _short(part[k]) for part, prefix, keys in picks for k in keys if k in part and _scalar(part[k])}


def card_metrics(metrics: Any) -> dict[str, Any]:
    """The figures an export's model card carries: the checkpoint's scalar metrics (per split
    where it has splits) and the headline of its real-speech record, to 4 significant digits.
    Sizes and MACs are left to the file and its config."""
    if not isinstance(metrics, dict):
        return {}
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if key in DERIVABLE:
            continue
        if key == "real" and isinstance(value, dict):
            out[key] = real_summary(value)
        elif key in SPLITS and isinstance(value, dict):
            out[key] = {k: _short(v) for k, v in value.items() if _scalar(v) and k not in DERIVABLE}
        elif _scalar(value):
            out[key] = _short(value)
    return out


def card_data(data: Any) -> dict[str, Any]:
    """The data recipe's scalars (the corpus, the exact ``kws-train synth`` command) and, of the
    synthesis record, its engines and clip counts; the checkpoint keeps the rest."""
    if not isinstance(data, dict):
        return {}
    out = {k: v for k, v in data.items() if _scalar(v)}
    synth = data.get("synth")
    if isinstance(synth, dict):
        out["synth"] = {k: synth[k] for k in ("engines", "clips") if k in synth}
    return out
