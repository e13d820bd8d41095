"""The one exception type the CLIs turn into a one-line message and a non-zero exit."""


class KWSError(Exception):
    """A user-facing error: the message names the file and what is wrong with it."""

    exit_code = 2
