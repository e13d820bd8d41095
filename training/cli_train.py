"""Model commands of kws-train (teacher, distill, eval, report)."""

COMMANDS: list = []
