"""Helpers of the widget tests."""

from __future__ import annotations

import contextlib

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
