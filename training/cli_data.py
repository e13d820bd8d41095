"""Data commands of kws-train (synth)."""

COMMANDS: list = []
