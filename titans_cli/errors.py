"""The one exception type for bad input or bad usage (the CLI maps it to exit code 2)."""


class TitansInputError(Exception):
    """Bad input or usage. The message is one line naming the file (and record/line/offset)."""
