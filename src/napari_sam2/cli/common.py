"""What every command shares: exit codes, the program name, messages on stderr."""

from __future__ import annotations

import sys

from .. import weights

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_INPUT = 2
EXIT_WEIGHTS = 3
EXIT_FAILED = 4  # some stacks of a batch failed while running; the others were written
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what shells report for a job ended by `kill`

PROG = "napari-sam2"


class WeightsUnavailable(weights.WeightsError):
    """A --checkpoint that does not exist."""


def log(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, file=sys.stderr)
