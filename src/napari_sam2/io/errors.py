"""The errors of file input and output, shared by the readers and writers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class InputError(ValueError):
    """A stack, prompts file, option or output path that cannot be used, and why."""


class PromptsFileError(InputError):
    """A bad prompts file; the message starts with ``file, line N:``."""

    def __init__(self, path, lines: int | Sequence[int] | None, message: str) -> None:
        self.path = Path(path)
        self.lines = [lines] if isinstance(lines, int) else list(lines or [])
        where = str(self.path)
        if self.lines:
            word = "line" if len(self.lines) == 1 else "lines"
            where += f", {word} {', '.join(map(str, self.lines))}"
        super().__init__(f"{where}: {message}")
