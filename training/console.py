"""The ``kws-train`` console script: SIGTERM is handled before torch is imported."""

from kws_export.console import console


def kws_train() -> None:
    console("training.cli", "kws-train")
