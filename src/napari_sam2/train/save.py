"""The files a training run writes (the checkpoint with its sidecar, the resumable state), each
whole or not at all: written under temporary names, renamed only once every file of the set is
complete, so a crash, Ctrl+C or a full disk never leaves half a file or a checkpoint without its
sidecar. A full disk (or quota, or file-size limit) is said as such, with the path and the space
needed, before any byte is written where the space is known to be short."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import torch

MARGIN = 1 << 20  # bytes beyond the tensors' own: pickled structure, zip records, JSON
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFullError(OSError):
    """No room to write a file of the run: a full disk, a quota, a file-size limit. An
    ``OSError`` (the command line's exit 1), its message (``strerror``) naming the path, the
    space needed and what is free, then what was kept in the command line's words; ``reason``
    is the message without that (for callers that say what was kept in their own words)."""

    reason: str = ""


def payload_bytes(obj) -> int:
    """What ``obj`` takes on disk, about: its tensors' bytes (in dicts, lists, tuples), the
    length of text or bytes, plus :data:`MARGIN`."""

    def size(o) -> int:
        if isinstance(o, torch.Tensor):
            return o.numel() * o.element_size()
        if isinstance(o, dict):
            return sum(size(v) for v in o.values())
        if isinstance(o, (list, tuple)):
            return sum(size(v) for v in o)
        if isinstance(o, (str, bytes)):
            return len(o.encode() if isinstance(o, str) else o)
        return 0

    return size(obj) + MARGIN


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n / 2**10:,.0f} KiB"


def no_room(path: Path, needed: int, then: str = "", limit: bool = False) -> DiskFullError:
    """The error for ``path`` that needs ``needed`` bytes; ``then``: what was kept, what to do."""
    if limit:
        message = (
            f"the file-size limit (ulimit -f) stops writing {path}, which needs {_mib(needed)}; "
            "raise the limit"
        )
    else:
        folder = path.parent.absolute()
        message = (
            f"the disk is full: writing {path} needs {_mib(needed)} and its folder {folder} "
            f"has {_mib(shutil.disk_usage(folder).free)} free; free some space or write elsewhere"
        )
    error = DiskFullError(errno.ENOSPC, message + then, str(path))
    error.reason = message
    return error


def check_room(paths: list[Path], needed: int, then: str = "") -> None:
    """Raise :class:`DiskFullError` now if the folder of ``paths`` has less than ``needed``
    bytes free (all of them in one folder)."""
    if shutil.disk_usage(paths[0].parent).free < needed:
        raise no_room(paths[0], needed, then)


def _write(f, data) -> int:
    """Every byte of the run's files goes through here (a test makes it fail part-way)."""
    return f.write(data)


class _Writer:
    """The file object ``torch.save`` writes to. torch turns an ``OSError`` raised by ``write``
    into a ``RuntimeError`` of its own; the original is kept here to say what happened."""

    def __init__(self, f) -> None:
        self.f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return _write(self.f, data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_together(files: dict[Path, object], then: str = "") -> None:
    """Write each ``{path: payload}`` (text, or what ``torch.save`` takes) whole, all in one
    folder: the space is checked first, every file is written under a temporary name, and they
    are renamed to their names only when all are complete. Nothing of a failed call is left;
    files already at those paths are kept (replaced only by complete ones). No room:
    :class:`DiskFullError` (``then`` added to its message)."""
    paths = list(files)
    needed = sum(payload_bytes(p) for p in files.values())
    check_room(paths, needed, then)
    temporary = {path: path.with_name(f".{path.name}.tmp-{os.getpid()}") for path in paths}
    try:
        for path, payload in files.items():
            writer = None
            try:
                with open(temporary[path], "wb") as f:
                    if isinstance(payload, str):
                        _write(f, payload.encode())
                    else:
                        writer = _Writer(f)
                        torch.save(payload, writer)
            except (OSError, RuntimeError) as e:
                cause = e if isinstance(e, OSError) else getattr(writer, "error", None)
                if cause is not None and cause.errno in NO_ROOM:
                    limit = cause.errno == errno.EFBIG
                    raise no_room(path, needed, then, limit) from cause
                raise
        for path in paths:
            os.replace(temporary[path], path)
    finally:
        for tmp in temporary.values():
            tmp.unlink(missing_ok=True)
