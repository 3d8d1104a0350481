"""Big slices in the widget (tiles on by default): a click is answered at native resolution in
the window that holds it (outlined in *SAM2 window*), anywhere on the slice; propagation follows
each object in a native-resolution window (as ns.WindowTracker on the same clicks), corrections
re-propagate, and divisions run downscaled, saying so. The 128-pixel test model tiles 600 x 700
slices."""

from __future__ import annotations

import numpy as np
import pytest
from qt_helpers import click, started, wait

pytestmark = pytest.mark.display


def big_slices(t=3, h=600, w=700):
    rr, cc = np.mgrid[:h, :w]
    data = np.full((t, h, w), 300, np.uint16)
    for i in range(t):
        data[i][(rr - 60) ** 2 + (cc - 80 - i) ** 2 < 10**2] = 3000
        data[i][(rr - 520 - i) ** 2 + (cc - 610) ** 2 < 12**2] = 3000
    return data


def _outside(mask, window):
    r0, c0, r1, c1 = window
    inside = np.zeros_like(mask)
    inside[r0:r1, c0:c1] = True
    return mask & ~inside


def test_clicks_on_a_big_slice_are_answered_in_windows_and_start_propagation(
    make_napari_viewer, qtbot, model
):
    viewer, widget = started(make_napari_viewer, qtbot, model, big_slices())
    assert widget.session.tiled and "tiles on" in widget.status.value
    assert "600×700" in widget.status.value and "128-pixel windows" in widget.status.value
    click(qtbot, widget, 0, 520, 610)  # far from the first window, bottom right
    first = widget.session.windows.window(0, 1)
    r0, c0, r1, c1 = first
    assert r0 <= 520 < r1 and c0 <= 610 < c1 and (r1 - r0, c1 - c0) == (128, 128)
    labels0 = np.asarray(widget.labels_layer.data[0]).copy()
    assert (labels0 == 1).any() and not _outside(labels0 == 1, first).any()
    assert f"rows {r0}–{r1}, cols {c0}–{c1}" in widget.status.value
    outline = widget.outline.layer
    assert outline is not None and outline.visible and len(outline.data) == 1
    corners = outline.data[0]
    assert np.allclose(corners[:, 0], 0)  # on slice 0
    assert np.allclose(corners[:, 1:].min(0), [r0 - 0.5, c0 - 0.5])
    assert np.allclose(corners[:, 1:].max(0), [r1 - 0.5, c1 - 0.5])
    assert viewer.layers.selection.active is widget.points  # the next click is a click

    widget.next_object()
    click(qtbot, widget, 0, 60, 80)  # top left, another window
    second = widget.session.windows.window(0, 2)
    assert second != first and second[0] <= 60 < second[2] and second[1] <= 80 < second[3]
    assert np.allclose(widget.outline.layer.data[0][:, 1:].min(0), np.array(second[:2]) - 0.5)
    labels0 = np.asarray(widget.labels_layer.data[0]).copy()
    assert (labels0 == 2).any() and not _outside(labels0 == 2, second).any()

    widget.propagate()
    wait(qtbot, widget)
    np.testing.assert_array_equal(widget.labels_layer.data[0], labels0)  # kept, native
    for t in (1, 2):
        assert {1, 2} <= set(np.unique(widget.labels_layer.data[t]).tolist())
    widget.outline.show.value = False
    assert not widget.outline.layer.visible


def test_small_slices_are_not_tiled_and_get_no_outline(make_napari_viewer, qtbot, model):
    data = big_slices(h=150, w=170)  # within 1.5 x 128
    viewer, widget = started(make_napari_viewer, qtbot, model, data)
    assert not widget.session.tiled and "tiles" not in widget.status.value
    click(qtbot, widget, 0, 60, 80)
    assert widget.outline.layer is None and "SAM2 window" not in viewer.layers


def _reference_labels(model, data, session, clicks):
    """ns.WindowTracker given the same clicks ((frame, obj_id, row, col, positive)), with the
    session's intensity window, written by track_to_labels."""
    import napari_sam2 as ns

    tracker = ns.WindowTracker(model, data, window=session.tracker.source.window)
    for frame, obj_id, row, col, positive in clicks:
        if frame == 0:
            tracker.add_prompt(frame, obj_id, points=[(row, col)], labels=[int(positive)])
    labels = ns.track_to_labels(tracker, direction="forward")
    for frame, obj_id, row, col, positive in clicks:
        if frame > 0:
            tracker.add_prompt(frame, obj_id, points=[(row, col)], labels=[int(positive)])
    if any(c[0] > 0 for c in clicks):
        labels = ns.track_to_labels(tracker, labels, direction="forward")
    tracker.close()
    return labels


def test_propagation_on_big_slices_runs_in_windows_and_corrections_re_propagate(
    make_napari_viewer, qtbot, model
):
    data = big_slices()
    viewer, widget = started(make_napari_viewer, qtbot, model, data)
    widget.direction.value = "forward"
    click(qtbot, widget, 0, 520, 610)
    widget.next_object()
    click(qtbot, widget, 0, 60, 80)
    widget.propagate()
    assert "in native-resolution windows" in widget.status.value  # said while it runs
    wait(qtbot, widget)
    assert "Propagated over 3 slices in native-resolution windows" in widget.status.value
    assert "re-centring" in widget.status.value
    clicks = [(0, 1, 520, 610, True), (0, 2, 60, 80, True)]
    expected = _reference_labels(model, data, widget.session, clicks)
    labels = np.asarray(widget.labels_layer.data)
    for t in (1, 2):  # propagated slices: the window tracker's, at native resolution
        np.testing.assert_array_equal(labels[t], expected[t])

    # a correction on a propagated slice (object 1, a negative click) and Propagate again
    widget.obj_id.value = 1
    widget.negative.value = True
    click(qtbot, widget, 1, 525, 615)
    widget.propagate()
    wait(qtbot, widget)
    assert "Propagated over 2 slices in native-resolution windows" in widget.status.value
    expected = _reference_labels(model, data, widget.session, [*clicks, (1, 1, 525, 615, False)])
    labels = np.asarray(widget.labels_layer.data)
    for t in (1, 2):
        np.testing.assert_array_equal(labels[t], expected[t])


def test_propagation_with_divisions_on_big_slices_runs_downscaled_and_says_so(
    make_napari_viewer, qtbot, model
):
    viewer, widget = started(make_napari_viewer, qtbot, model, big_slices(t=2))
    widget.direction.value = "forward"  # divisions are followed forward
    click(qtbot, widget, 0, 520, 610)
    widget.lineage.divisions.value = True
    widget.propagate()
    assert "on downscaled slices (new objects and divisions" in widget.status.value
    wait(qtbot, widget)
    assert "in native-resolution windows" not in widget.status.value
    assert (np.asarray(widget.labels_layer.data[1]) > 0).any()


def test_cancel_in_windows_keeps_a_prefix_and_propagate_finishes_it(
    make_napari_viewer, qtbot, model
):
    from qt_helpers import on_each_slice

    data = big_slices(t=4)
    viewer, widget = started(make_napari_viewer, qtbot, model, data)
    widget.direction.value = "forward"
    click(qtbot, widget, 0, 520, 610)

    def cancel_at_once(result):
        widget.cancel()

    with on_each_slice(widget, cancel_at_once):
        widget.propagate()
        wait(qtbot, widget)
    labels = np.asarray(widget.labels_layer.data)
    done = [t for t in range(4) if (labels[t] == 1).any()]
    assert done == list(range(len(done))) and len(done) < 4  # a prefix of the stack
    assert "Stopped after" in widget.status.value
    widget.propagate()
    wait(qtbot, widget)
    assert "Propagated over 4 slices in native-resolution windows" in widget.status.value
    expected = _reference_labels(model, data, widget.session, [(0, 1, 520, 610, True)])
    np.testing.assert_array_equal(np.asarray(widget.labels_layer.data)[1:], expected[1:])
