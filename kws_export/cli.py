"""``kws-export``: inspect checkpoints and export them (TorchScript, ONNX, streaming, int8)."""

from __future__ import annotations

import json
import sys

import click

from kws_export.checkpoint import load_checkpoint
from kws_export.cli_support import run_click
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


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_click(cli, "kws-export", argv))


if __name__ == "__main__":
    main()
