"""`make demo`: export a shipped student, stream a demo recording through the runtime,
print the detections and write a probability plot.  Steps whose pieces have not landed
yet say so and are skipped; the demo always exits 0 when it did what it could."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "demo-out"
BIN = Path(sys.executable).parent


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def run(cmd: list[str]) -> None:
    say("$ " + " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


def summarize(path: Path) -> None:
    """One line from `kws-export info` on a checkpoint instead of its whole JSON."""
    import json

    say(f"$ kws-export info {path}")
    info = json.loads(subprocess.run([str(BIN / "kws-export"), "info", str(path)], check=True, cwd=ROOT,
                                     capture_output=True, text=True).stdout)
    meta, cfg = info.get("metadata", {}), info.get("config", {})
    metrics = meta.get("metrics", {})
    say(f"  {path.name}: {info['params']:,} params (channels {cfg.get('channels')}, hidden {cfg.get('hidden')}), "
        f"test AU-FA-FR {metrics.get('au_fa_fr', float('nan')):.2e}, threshold {meta.get('threshold')}")


def main() -> int:
    OUT.mkdir(exist_ok=True)
    ckpt = ROOT / "checkpoints" / "student.pt"
    if not ckpt.exists():
        say("shipped student checkpoints/student.pt: not available yet (training issue)")
        ckpt = None
    else:
        summarize(ckpt)

    model = None
    if ckpt is None or not available("kws_export.export_onnx"):
        say("export of the streaming int8 ONNX: not available yet (export issue)")
    else:
        from kws_export.config import FAST_CHUNK_MS

        # the runtime's fastest file: int8 weights, four 80 ms steps per onnxruntime call
        model = OUT / "student.stream.int8w.onnx"
        run([BIN / "kws-export", "onnx", "--ckpt", ckpt, "--streaming", "--int8", "--int8-mode", "weights",
             "--chunk-ms", f"{FAST_CHUNK_MS:g}", "-o", model])

    stream = OUT / "demo_stream.wav"
    if not available("training.demo_stream"):
        say("demo stream (speech, keyword, speech): not available yet (data issue)")
        stream = None
    else:
        run([sys.executable, "-m", "training.demo_stream", "--out", stream])

    if model is None or stream is None or not (ROOT / "runtime" / "detect.py").exists():
        say("detection on the demo stream: not available yet (runtime issue)")
    else:
        run([sys.executable, ROOT / "runtime" / "detect.py", "--model", model, stream, "--plot", OUT / "probability.png"])
        say(f"probability plot written to {OUT / 'probability.png'}")
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
