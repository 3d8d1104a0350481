"""Helpers of the widget tests."""

from __future__ import annotations

import contextlib
import time

import numpy as np

TIMEOUT = 60_000


def wait(qtbot, widget) -> None:
    """Until every background worker of the widget has finished and its signals arrived."""
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT)
    qtbot.wait(50)
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT)


def started(make_napari_viewer, qtbot, model, data, **image_options):
    """A viewer showing ``data`` and a widget started on it with ``model`` (embedding done)."""
    from napari_sam2._qt.widget import SAM2Widget

    viewer = make_napari_viewer()
    image = viewer.add_image(data, name="cells", **image_options)
    widget = SAM2Widget(viewer)
    widget.use_model(model, image)
    wait(qtbot, widget)  # the background embedding of the slice shown
    return viewer, widget


def click(qtbot, widget, frame, row, col) -> None:
    """A click on (frame, row, col) through the Points layer, and its segmentation done."""
    widget.points.add([[frame, row, col]])
    wait(qtbot, widget)


@contextlib.contextmanager
def on_each_slice(widget, handler):
    """Call ``handler(result)`` after the widget shows each propagated slice, hooked in before
    a propagation starts (a slot connected to its worker afterwards may miss every slice)."""
    show_frame = widget._show_frame

    def show_and_handle(result):
        show_frame(result)
        handler(result)

    widget._show_frame = show_and_handle
    try:
        yield
    finally:
        widget._show_frame = show_frame


class StallMeter:
    """How long the Qt event loop is kept from running: a timer ticks every ``interval_ms``
    and each late tick is a stall of the event loop (the time beyond the interval). Steps are
    run from the event loop itself (a zero timer), so that their handlers, and the signals of
    the workers they start, are measured like a user's clicks; ``stalls[name]`` lists the
    stalls (ms) seen while a step ran, until its background work finished."""

    def __init__(self, qtbot, interval_ms: int = 10) -> None:
        from qtpy.QtCore import QTimer

        self.qtbot, self.interval = qtbot, interval_ms / 1000
        self.stalls: dict[str, list[float]] = {}
        self._current: list[float] | None = None
        self._last = 0.0
        self._timer = QTimer()
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._current is not None:
            self._current.append(max(0.0, (now - self._last - self.interval) * 1000))
        self._last = now

    def step(self, name: str, action, widget, done=None) -> None:
        """Run ``action()`` from the event loop, then wait until the widget is idle (and
        ``done()``, when given, is true), recording the stalls under ``name``."""
        from qtpy.QtCore import QTimer

        ran = []
        self._current = self.stalls.setdefault(name, [])
        self._last = time.perf_counter()
        self._timer.start()
        QTimer.singleShot(0, lambda: (action(), ran.append(True)))
        try:
            self.qtbot.waitUntil(lambda: bool(ran), timeout=TIMEOUT)
            wait(self.qtbot, widget)
            if done is not None:
                self.qtbot.waitUntil(done, timeout=TIMEOUT)
            self.qtbot.wait(3 * int(self.interval * 1000))  # the ticks after the last signal
        finally:
            self._timer.stop()
            self._current = None

    def worst(self) -> dict[str, float]:
        """The longest stall of each step (ms)."""
        return {name: max(s, default=0.0) for name, s in self.stalls.items()}


def moving_and_still_cell(t=6, h=40, w=56):
    """A bright disc moving down and right past a dimmer one that stays (uint16)."""
    rr, cc = np.mgrid[:h, :w]
    data = np.full((t, h, w), 300, np.uint16)
    for i in range(t):
        data[i][(rr - 15 - i) ** 2 + (cc - 20 - i) ** 2 < 8**2] = 3000
        data[i][(rr - 30) ** 2 + (cc - 44) ** 2 < 6**2] = 2500
    return data


def two_moving_cells(t=5, h=40, w=56):
    """Two discs of one brightness, one moving down, one moving left (uint16)."""
    rr, cc = np.mgrid[:h, :w]
    data = np.full((t, h, w), 300, np.uint16)
    for i in range(t):
        data[i][(rr - 14 - i) ** 2 + (cc - 16) ** 2 < 7**2] = 3000
        data[i][(rr - 28) ** 2 + (cc - 42 + i) ** 2 < 6**2] = 3000
    return data
