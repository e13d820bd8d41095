"""``kws-export``: inspect checkpoints and export them (TorchScript, ONNX, streaming, int8).

This CLI makes no audio: static int8 calibrates on ``--calib DIR`` and ``verify`` runs
``--wav`` files, or, when neither is given, on the ``AudioSource`` passed to ``main``.  The
installed ``kws-export`` command (``training.console``) passes kws-edge's synthesized
speech; ``python -m kws_export.cli`` alone asks for the files.
"""

from __future__ import annotations

import json

import click

from kws_export.checkpoint import load_checkpoint
from kws_export.cli_support import run_click_and_exit
from kws_export.model import count_parameters

STRIDE = click.option(
    "--stride", type=(int, int), default=None,
    help="Conv stride (mel, time) for bare state dicts, which do not store it. Default: 2 8.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kws-edge")
def cli() -> None:
    """Export kws-edge keyword spotters for on-device streaming."""


def describe_checkpoint(path: str, stride=None) -> dict:
    ckpt = load_checkpoint(path, stride)
    model = ckpt.build_model()
    return {
        "path": str(path),
        "kind": ckpt.kind,
        "config": ckpt.config.to_dict(),
        "params": count_parameters(model),
        "metadata": ckpt.metadata,
    }


@cli.command()
@click.argument("path", type=click.Path(dir_okay=True))
@STRIDE
def info(path: str, stride) -> None:
    """Print one JSON object describing a checkpoint or an exported model."""
    if str(path).endswith(".onnx"):
        from kws_export.onnx_info import describe_onnx  # imported lazily: onnx is heavy

        desc = describe_onnx(path)
    else:
        desc = describe_checkpoint(path, stride)
    click.echo(json.dumps(desc, indent=2, sort_keys=False, default=str))


CKPT = click.option("--ckpt", required=True, type=click.Path(),
                    help="Checkpoint: kws-edge .pt, a seminar state dict or a course-shaped TorchScript file.")


@cli.command("onnx")
@CKPT
@click.option("-o", "--output", required=True, type=click.Path(), help="Output .onnx path (written atomically).")
@click.option("--streaming", is_flag=True, help="Export the stateful streaming step instead of the offline clip model.")
@click.option("--int8", is_flag=True, help="int8 quantization of the streaming step (see --int8-mode).")
@click.option("--int8-mode", type=click.Choice(["static", "weights"]), default="static", show_default=True,
              help="static: calibrated QDQ, int8 arithmetic; weights: int8 storage, float32 arithmetic "
                   "(no calibration, exact to the rounded weights, fastest for small models).")
@click.option("--calib", type=click.Path(), default=None,
              help="Directory of calibration wavs for static --int8 (default: a small corpus synthesized on the fly).")
@click.option("--chunk-ms", type=float, default=None, help="Audio per call, a multiple of the step (default: one step, 80 ms).")
@click.option("--window-ms", type=float, default=None, help="Attention window (default: the training clip, 1 s = 11 steps).")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (17-21).")
@STRIDE
@click.pass_obj
def onnx_cmd(obj, ckpt, output, streaming, int8, int8_mode, calib, chunk_ms, window_ms, opset, stride) -> None:
    """Export to ONNX (log-mel frontend inside the graph, kws.* metadata)."""
    from kws_export.export_onnx import export_onnx_file

    desc = export_onnx_file(ckpt, output, streaming=streaming, int8=int8, calib=calib, chunk_ms=chunk_ms,
                            window_ms=window_ms, opset=opset, stride=stride, int8_mode=int8_mode,
                            speech=_speech(obj))
    click.echo(json.dumps(desc, indent=2, default=str))


@cli.command("torchscript")
@CKPT
@click.option("-o", "--output", required=True, type=click.Path(), help="Output .ts path (written atomically).")
@click.option("--streaming", is_flag=True, help="Script init_state/step instead of the offline waveform -> P(keyword) model.")
@click.option("--window-ms", type=float, default=None, help="Attention window of the streaming step.")
@STRIDE
def torchscript_cmd(ckpt, output, streaming, window_ms, stride) -> None:
    """Export to TorchScript: offline, a drop-in for the course's stream.py; or the streaming step."""
    from pathlib import Path

    from kws_export.fileio import check_writable
    from kws_export.export_torchscript import export_torchscript

    check_writable(output)
    model = load_checkpoint(ckpt, stride).build_model()
    export_torchscript(model, output, streaming_mode=streaming, window_ms=window_ms)
    click.echo(json.dumps({"path": str(output), "kind": "torchscript", "streaming": bool(streaming),
                           "size_bytes": Path(output).stat().st_size}, indent=2))


@cli.command("verify")
@CKPT
@click.option("--onnx", "onnx_paths", multiple=True, type=click.Path(), help="ONNX export(s) to check.")
@click.option("--ts", "ts_paths", multiple=True, type=click.Path(), help="TorchScript export(s) to check.")
@click.option("--wav", "wavs", multiple=True, type=click.Path(), help="Audio to run (default: a synthesized stream).")
@click.option("--seconds", type=float, default=30.0, show_default=True, help="Length of the synthesized stream.")
@click.option("--only", is_flag=True, help="Check only the files given, not their NAME.* siblings.")
@STRIDE
@click.pass_obj
def verify_cmd(obj, ckpt, onnx_paths, ts_paths, wavs, seconds, only, stride) -> int:
    """Run eager PyTorch and every export over the same audio; print a JSON parity report.

    Exit 1 when a pair is beyond tolerance (fp32: |dprob| <= 1e-5; int8: |dprob| <= 0.02 and
    decisions at the threshold agree on >= 99.9% of the steps whose reference is more than
    0.02 from the threshold)."""
    from kws_export.verify import report_json, verify

    report = verify(ckpt, list(onnx_paths), list(ts_paths), list(wavs), seconds=seconds, discover=not only, stride=stride,
                    speech=_speech(obj))
    click.echo(report_json(report))
    return 0 if report["ok"] else 1


def _speech(obj):
    return obj.get("speech") if isinstance(obj, dict) else None


def main(argv: list[str] | None = None, speech=None) -> None:
    """``speech``: an ``kws_export.audio.AudioSource`` for static int8 without --calib and
    verify without --wav (None: those need the files)."""
    run_click_and_exit(cli, "kws-export", argv, obj={"speech": speech})


if __name__ == "__main__":
    main()
