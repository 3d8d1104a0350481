"""The slices next to the one shown are embedded in the background, so that a click after
moving there is answered without running the image encoder; and a click while the session is
busy (an embedding, a propagated slice) never waits on the event loop."""

from __future__ import annotations

import pytest
from qt_helpers import click, moving_and_still_cell, started, wait

pytestmark = pytest.mark.display


def test_the_neighbours_of_the_slice_shown_are_embedded_ahead(make_napari_viewer, qtbot, model):
    viewer, widget = started(make_napari_viewer, qtbot, model, moving_and_still_cell(t=8))
    known = widget.session.tracker._embeddings.known
    shown = widget.current_frame()
    assert all(known(f) for f in (shown - 1, shown, shown + 1))
    assert not known(0) and not known(7)
    viewer.dims.set_current_step(0, 7)
    wait(qtbot, widget)
    assert known(6) and known(7)
    computed = widget.session.tracker._embeddings.computed
    viewer.dims.set_current_step(0, 6)  # embedded ahead already: only its neighbour 5 is new
    click(qtbot, widget, 6, 21, 26)
    assert widget.session.tracker._embeddings.computed == computed + 1 and known(5)
    assert (widget.labels_layer.data[6] == 1).any()

    widget.ahead.value = False
    viewer.dims.set_current_step(0, 0)
    wait(qtbot, widget)
    assert known(0) and not known(1)  # the slice shown only


def test_a_click_while_the_session_is_busy_does_not_wait_on_the_event_loop(
    make_napari_viewer, qtbot, model
):
    """A click just after moving to a slice not embedded yet: the session's lock is held by
    that embedding (seconds at 1024 on a CPU; held here by a thread for 1.5 s). The click's
    handler returns at once and its mask comes when the lock is free."""
    import threading
    import time

    viewer, widget = started(make_napari_viewer, qtbot, model, moving_and_still_cell(t=4))
    held = threading.Event()

    def embedding():
        with widget.session.lock:
            held.set()
            time.sleep(1.5)

    thread = threading.Thread(target=embedding)
    thread.start()
    held.wait()
    t0 = time.perf_counter()
    widget.points.add([[1, 21, 26]])
    handler = time.perf_counter() - t0
    wait(qtbot, widget)
    thread.join()
    assert handler < 0.5, f"the click's handler waited {handler:.2f} s for the session"
    assert (widget.labels_layer.data[1] == 1).any()
