"""The click path on the event loop: writing a slice's result and listing the objects read
the session's view, never waiting for its lock (which a propagated slice or an embedding holds
for seconds at 1024 on a CPU); a result is written into SAM2 labels only where it changes
them, and undone exactly."""

from __future__ import annotations

import time

import numpy as np
import pytest
from lock_holding import lock_held
from qt_helpers import click, moving_and_still_cell, started, wait

pytestmark = pytest.mark.display


def test_writing_a_result_and_listing_objects_do_not_wait_for_the_session(
    make_napari_viewer, qtbot, model
):
    viewer, widget = started(make_napari_viewer, qtbot, model, moving_and_still_cell(t=4))
    click(qtbot, widget, 1, 21, 26)
    result = widget.session.tracker.result(1)
    widget.labels_layer.data[1] = 0  # so that writing the result changes the slice
    with lock_held(widget.session.lock):  # as a propagation holds it per slice
        t0 = time.perf_counter()
        widget.write_result(result)
        widget.refresh_objects()
        took = time.perf_counter() - t0
    assert took < 0.5, f"the event loop waited {took:.2f} s for the session's lock"
    assert (widget.labels_layer.data[1] == 1).any()
    assert widget.object_list.infos[1].prompted == [1]
    assert widget.session.obj_ids == (1,)
    assert widget.session.mask_prompted(1) == set()


def test_a_result_is_written_where_it_changes_the_labels_and_undone_exactly(
    make_napari_viewer, qtbot, model
):
    viewer, widget = started(make_napari_viewer, qtbot, model, moving_and_still_cell(t=4))
    labels = widget.labels_layer
    labels.data[1, 35:40, 0:5] = 9  # a label of the user's, far from the object
    click(qtbot, widget, 1, 21, 26)
    first = labels.data.copy()
    assert (first[1] == 1).any() and (first[1, 35:40, 0:5] == 9).all()
    click(qtbot, widget, 1, 18, 22)  # a second click: object 1's mask changes
    second = labels.data.copy()
    refreshes = []
    refresh = labels.refresh
    labels.refresh = lambda *a, **k: (refreshes.append(1), refresh(*a, **k))
    try:
        steps = len(widget.history.done)
        widget.write_result(widget.session.tracker.result(1))  # the same result again
    finally:
        labels.refresh = refresh
    assert refreshes == [], "writing a result that changes nothing refreshed the layer"
    assert len(widget.history.done) == steps
    np.testing.assert_array_equal(labels.data, second)
    patch = widget.history.done[-1].patches[-1]  # the second click's change: a box
    rows, cols = patch.region[-2:]
    changed = np.argwhere(first[1] != second[1])
    assert rows.start == changed[:, 0].min() and rows.stop == changed[:, 0].max() + 1
    assert cols.start == changed[:, 1].min() and cols.stop == changed[:, 1].max() + 1
    widget.undo_step()
    wait(qtbot, widget)
    np.testing.assert_array_equal(labels.data, first)
    widget.redo_step()
    wait(qtbot, widget)
    np.testing.assert_array_equal(labels.data, second)
    assert widget._labelled[1] == {1, 9}
