"""The ``kws-export`` command as installed with kws-edge: kws_export's CLI with synthesized
speech (``training.speech``) as the audio for static int8 without ``--calib`` and for
``verify`` without ``--wav``.  kws_export itself never imports training."""

from __future__ import annotations

from kws_export import cli as export_cli
from kws_export.cli_support import run_click
from training.speech import SYNTHESIZED


def run(argv: list[str]) -> int:
    """In-process run (tests, scripts): the exit code, the caller's SIGTERM handler kept."""
    return run_click(export_cli.cli, "kws-export", argv, obj={"speech": SYNTHESIZED})


def main(argv: list[str] | None = None) -> None:
    export_cli.main(argv, speech=SYNTHESIZED)


if __name__ == "__main__":
    main()
