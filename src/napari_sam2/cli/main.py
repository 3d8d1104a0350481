"""The ``napari-sam2`` command: segment and track objects in stacks without a viewer.

    napari-sam2 segment STACK [STACK ...] --prompts PROMPTS -o OUT [options]
    napari-sam2 segment STACK --auto FRAME -o OUT      # segment everything on FRAME, track all
    napari-sam2 download [MODEL ...]        # default sam2.1_hiera_tiny; "all" for all eight
    napari-sam2 view [IMAGE]                # napari with the SAM 2 widget and an image/sample
    napari-sam2 info                        # models cached, cache folder, device, versions

Exit codes: 0 success; 1 an I/O error (disk full, file-size limit) or an unexpected error (a bug:
rerun with --debug and report it); 2 bad usage or input (the message names the file, and the line
of a bad prompts row); 3 weights unavailable (offline, checksum, missing, empty or unreadable
checkpoint); 130 interrupted (Ctrl+C); 143 terminated (SIGTERM). Errors go to stderr as one
message; ``--debug`` adds the traceback. Interrupted or failed runs leave no partial output
(except ``embed``, whose store keeps the frames done: run it again to complete it).
docs/cli.md has the details.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback

from .. import weights
from ..engine.embeddings import EmbeddingsError
from ..engine.frames import FrameSourceError
from ..engine.labels import LabelError
from ..engine.prompts import PromptError
from ..io import InputError
from ..model.checkpoint import CheckpointError, DeviceError
from ..model.precision import PrecisionError
from .common import (
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_UNEXPECTED,
    EXIT_WEIGHTS,
    PROG,
)
from .parser import build_parser


class Terminated(BaseException):
    """SIGTERM arrived (``kill``, ``timeout``, a batch scheduler ending the job). A
    BaseException, like KeyboardInterrupt, so that nothing catches it by accident and every
    ``finally`` on the way out cleans up (partial label files, spilled memory)."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2), already printed
        return e.code if isinstance(e.code, int) else EXIT_INPUT
    debug = getattr(args, "debug", False)
    previous = _handle_sigterm()
    try:
        return args.run(args)
    except KeyboardInterrupt as e:  # its message, if any, says what was kept (embed)
        _print_error(f"interrupted; {str(e) or 'no partial output was kept'}", debug)
        return EXIT_INTERRUPTED
    except Terminated as e:
        _print_error(f"terminated (SIGTERM); {str(e) or 'no partial output was kept'}", debug)
        return EXIT_TERMINATED
    except (
        InputError,
        PromptError,
        FrameSourceError,
        LabelError,
        DeviceError,
        PrecisionError,
        EmbeddingsError,
    ) as e:
        _print_error(str(e), debug)
        return EXIT_INPUT
    except (weights.WeightsError, CheckpointError) as e:
        _print_error(str(e), debug)
        return EXIT_WEIGHTS
    except BrokenPipeError:  # the reader stopped reading (`napari-sam2 info | head`): fine
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except PermissionError as e:  # a file or folder the user may not read or write
        _print_error(f"permission denied: {e.filename or e}", debug)
        return EXIT_INPUT
    except OSError as e:  # a full disk, a file-size limit, a vanished network share
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        _print_error(
            f"I/O error{where}: {e.strerror or e}; the output being written was discarded and "
            "any previous output at that path is kept",
            debug,
        )
        return EXIT_UNEXPECTED
    except Exception as e:
        _print_error(
            f"unexpected error: {type(e).__name__}: {e}"
            + ("" if debug else "\n(run again with --debug for the traceback, and report it)"),
            debug,
        )
        return EXIT_UNEXPECTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _handle_sigterm():
    """Turn SIGTERM into :class:`Terminated` while a command runs (main thread only); returns
    the handler to restore, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _on_sigterm)


def _print_error(message: str, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    print(f"{PROG}: error: {message}", file=sys.stderr)
