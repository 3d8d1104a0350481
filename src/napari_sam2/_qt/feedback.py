"""What the widget tells the user, and the background work it runs.

- :class:`Feedback`: a status line that wraps (a long message never widens the dock), a progress
  bar inside the widget (napari's activity panel is collapsed by default), and notifications.
  An error stays on the status line until the next action succeeds.
- :class:`Runner`: napari workers with the widget's error handling: errors the user can fix come
  back as messages, not tracebacks; everything still running can be stopped at once, and after
  :meth:`Runner.shutdown` no signal of a late worker reaches a closed widget. Its threads
  are kept for :data:`KEEP_THREADS_MS` after their last work (Qt's default is 30 s): a thread
  new to torch pays 10-45 ms more on its first click (measured, 1024² input, 2 cores), and a
  user often looks at a mask for longer than 30 s before the next click.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

from magicgui.widgets import Label, ProgressBar
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QThreadPool
from qtpy.QtWidgets import QSizePolicy

from ..engine.prompts import PromptError
from ..weights import WeightsError

# Errors that are the user's to fix (bad file, offline, bad prompt): shown as a message, not as
# a traceback. Anything else is a bug and reaches napari's error reporting.
EXPECTED_ERRORS = (ValueError, KeyError, OSError, WeightsError, MemoryError)

KEEP_THREADS_MS = 15 * 60 * 1000  # how long napari's idle worker threads are kept (at least)


def keep_worker_threads(pool: QThreadPool | None = None) -> None:
    """Keep the idle threads of napari's worker pool (Qt's global one) for at least
    :data:`KEEP_THREADS_MS`; a longer setting (or never expiring, -1) is left as it is."""
    pool = pool or QThreadPool.globalInstance()
    if 0 <= pool.expiryTimeout() < KEEP_THREADS_MS:
        pool.setExpiryTimeout(KEEP_THREADS_MS)


@dataclass(frozen=True)
class Failure:
    error: BaseException


def guarded(fn):
    """``fn`` with expected errors returned (or yielded) as :class:`Failure` values."""
    if inspect.isgeneratorfunction(fn):

        def generator(*args):
            try:
                return (yield from fn(*args))
            except EXPECTED_ERRORS as e:
                yield Failure(e)

        return generator

    def call(*args):
        try:
            return fn(*args)
        except EXPECTED_ERRORS as e:
            return Failure(e)

    return call


def plain(error: BaseException) -> str:
    """An error in the user's words: what happened and what to do, without API names."""
    text = str(error) or type(error).__name__
    if isinstance(error, MemoryError):
        return (
            "Not enough memory for this step. Use a smaller input size, or close other "
            "programs; nothing was changed."
        )
    if "Weights only load failed" in text:  # PyTorch's paragraph about torch.load's options
        path = re.search(r"cannot read checkpoint (.*?) \(", text)
        name = path.group(1) if path else "the checkpoint"
        return (
            f"Cannot read {name}: it is not an official SAM 2 checkpoint (it holds Python "
            "objects, which are not loaded for safety). Download the model again (leave "
            "'checkpoint' empty) or choose a good copy."
        )
    if isinstance(error, PromptError):
        text = text.replace("add a prompt with add_prompt() first", "click on an object first")
        text = text.replace("; add one or remove_object()", ": click on them, or delete them")
        text = text.replace("; coordinates are (row, col) pixel indices of the original image", "")
    return text


class Feedback:
    """The status line, the progress bar and notifications of the widget."""

    def __init__(self) -> None:
        self.status = Label(value="Pick an image and press Start.")
        label = self.status.native
        label.setWordWrap(True)
        # The dock keeps its width: the label takes the width it is given, and wraps.
        label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        label.setMinimumWidth(50)
        self.bar = ProgressBar(value=0, min=0, max=1, visible=False)
        self.error_shown = False

    def say(self, message: str) -> None:
        """Progress or information; does not hide an error being shown."""
        if not self.error_shown:
            self.status.value = message

    def done(self, message: str, notify: bool = False) -> None:
        """An action succeeded: the message replaces anything, an error included."""
        self.error_shown = False
        self.status.value = message
        if notify:
            show_info(f"SAM 2: {message}")

    def error(self, error: BaseException | str) -> None:
        """Something the user must know: on the status line until an action succeeds."""
        message = error if isinstance(error, str) else plain(error)
        self.error_shown = True
        self.status.value = f"⚠ {message}"
        show_error(f"SAM 2: {message}")

    def start_progress(self, total: int, label: str) -> None:
        self.bar.max = max(1, int(total))
        self.bar.value = 0
        self.bar.label = label
        self.bar.visible = True

    def advance(self, n: int = 1) -> int:
        self.bar.value = min(self.bar.max, self.bar.value + n)
        return self.bar.value

    def end_progress(self) -> int:
        """Hide the bar; returns how far it got."""
        done = self.bar.value
        self.bar.visible = False
        return done


class Runner:
    """Starts napari workers for the widget and keeps track of them."""

    def __init__(self, on_error) -> None:
        keep_worker_threads()
        self._on_error = on_error
        self.workers: set = set()
        self.last = None  # the most recent worker (tests wait on it)
        self.closed = False

    @property
    def busy(self) -> bool:
        return bool(self.workers)

    def run(self, fn, *args, yielded=None, returned=None, finished=None, quiet=False):
        """Run ``fn(*args)`` in a worker. Expected errors go to the error handler (unless
        ``quiet``); ``yielded``/``returned``/``finished`` are called in the main thread, and
        never after :meth:`shutdown`."""
        worker = create_worker(guarded(fn), *args)
        if inspect.isgeneratorfunction(fn):
            worker.yielded.connect(self._receive(yielded, quiet))
        worker.returned.connect(self._receive(returned, quiet))
        if finished is not None:
            worker.finished.connect(self._alive(finished))
        if not quiet:
            worker.errored.connect(self._alive(self._on_error))
        self.workers.add(worker)
        worker.finished.connect(lambda: self.workers.discard(worker))
        self.last = worker
        worker.start()
        return worker

    def _alive(self, handler):
        def call(*args):
            if not self.closed:
                handler(*args)

        return call

    def _receive(self, handler, quiet):
        def receive(value):
            if self.closed:
                return
            if isinstance(value, Failure):
                if not quiet:
                    self._on_error(value.error)
            elif handler is not None:
                handler(value)

        return receive

    def stop_all(self) -> None:
        """Ask every worker to stop (generators stop at their next step)."""
        for worker in list(self.workers):
            worker.quit()

    def shutdown(self) -> None:
        """Stop everything; late signals are dropped."""
        self.closed = True
        self.stop_all()
