#!/usr/bin/env python3
"""`make export`: regenerate exported/ from every shipped checkpoint.

For each checkpoints/NAME.pt this writes
    exported/NAME.onnx              offline clip model   (audio [batch, samples] -> prob [batch])
    exported/NAME.stream.onnx       streaming step, float32
    exported/NAME.stream.int8.onnx  streaming step, static int8 (calibrated on synthesized speech)
    exported/NAME.stream.int8w.onnx streaming step, int8 weights / float32 arithmetic, 4 steps
                                    (320 ms) per call: the runtime's fastest file
    exported/NAME.ts                TorchScript, a drop-in for the course's stream.py
(a speech-embedding checkpoint: exported/NAME.stream.onnx only, see EMBEDDING_SUFFIXES)
Every file is written atomically; a bad checkpoint is one line on stderr and exit 2.
``--verify`` also runs `kws-export verify` on each and fails (exit 1) beyond tolerance.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SUFFIXES = (".onnx", ".stream.onnx", ".stream.int8.onnx", ".ts", ".stream.int8w.onnx")
# The speech-embedding model exports its streaming step only: its mel graph normalises over its
# whole input (no batched offline graph), and rounding its conv weights to int8 moves its
# probability by up to 0.2 (measured on a random head), so there is no int8 file either.
EMBEDDING_SUFFIXES = (".stream.onnx",)


def suffixes_of(ckpt: Path) -> tuple[str, ...]:
    from kws_export.checkpoint import load_checkpoint

    return EMBEDDING_SUFFIXES if load_checkpoint(ckpt).is_embedding else SUFFIXES


def export_one(ckpt: Path, out_dir: Path) -> list[Path]:
    from kws_export.checkpoint import load_checkpoint
    from kws_export.config import FAST_CHUNK_MS
    from kws_export.export_onnx import export_onnx_file
    from kws_export.export_torchscript import export_torchscript
    from training.speech import SYNTHESIZED

    name = ckpt.stem
    if load_checkpoint(ckpt).is_embedding:
        path = out_dir / f"{name}.stream.onnx"
        export_onnx_file(ckpt, path, streaming=True)
        return [path]
    paths = [out_dir / f"{name}{suffix}" for suffix in SUFFIXES]
    export_onnx_file(ckpt, paths[0])
    export_onnx_file(ckpt, paths[1], streaming=True)
    export_onnx_file(ckpt, paths[2], streaming=True, int8=True, speech=SYNTHESIZED)
    export_torchscript(load_checkpoint(ckpt).build_model(), paths[3])
    export_onnx_file(ckpt, paths[4], streaming=True, int8=True, int8_mode="weights", chunk_ms=FAST_CHUNK_MS)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints", help="directory of NAME.pt files")
    parser.add_argument("--out", type=Path, default=ROOT / "exported", help="output directory")
    parser.add_argument("--only", nargs="*", default=None, help="export only these NAMEs")
    parser.add_argument("--verify", action="store_true", help="run kws-export verify on each export set")
    args = parser.parse_args(argv)

    import torch

    from kws_export.errors import KWSError

    torch.set_num_threads(1)  # small graphs; keep a shared machine responsive
    try:
        if not args.checkpoints.is_dir():
            raise KWSError(f"{args.checkpoints}: checkpoint directory not found")
        ckpts = sorted(args.checkpoints.glob("*.pt"))
        if args.only is not None:
            ckpts = [c for c in ckpts if c.stem in set(args.only)]
            missing = sorted(set(args.only) - {c.stem for c in ckpts})
            if missing:
                raise KWSError(f"{args.checkpoints}: no checkpoint named {', '.join(missing)}")
        if not ckpts:
            print(f"export_all: no checkpoints in {args.checkpoints}; nothing to export", file=sys.stderr)
            return 0
        args.out.mkdir(parents=True, exist_ok=True)
        failed = []
        for ckpt in ckpts:
            start = time.perf_counter()
            paths = export_one(ckpt, args.out)
            sizes = ", ".join(f"{p.name} {p.stat().st_size / 1024:.1f} KB" for p in paths)
            print(f"export_all: {ckpt.name} -> {sizes} ({time.perf_counter() - start:.1f} s)")
            if args.verify:
                from kws_export.verify import verify
                from training.speech import SYNTHESIZED

                # the streaming step (its int8 siblings are discovered) and TorchScript where made
                stream = [str(p) for p in paths if p.name.endswith(".stream.onnx")]
                ts = [str(p) for p in paths if p.suffix == ".ts"]
                report = verify(str(ckpt), stream, ts, discover=True, speech=SYNTHESIZED)
                worst = {f"{p['a']} vs {p['b']}": round(p["max_abs_diff"], 7) for p in report["pairs"]}
                print(f"export_all: verify {ckpt.stem}: {'ok' if report['ok'] else 'FAILED'} {worst}")
                if not report["ok"]:
                    failed.append(ckpt.stem)
        return 1 if failed else 0
    except KWSError as exc:
        print(f"export_all: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
