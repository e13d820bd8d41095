"""The console scripts: SIGTERM is handled before torch is imported.

``kws-export`` lives here, not in kws_export, because the installed command gives
kws_export's CLI training's synthesized speech (``training.export_cli``); kws_export
stands on its own (``kws_export.console.kws_export`` is the CLI without it)."""

from kws_export.console import console


def kws_train() -> None:
    console("training.cli", "kws-train")


def kws_export() -> None:
    console("training.export_cli", "kws-export")
