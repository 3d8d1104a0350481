"""Editing objects in the list (merge, new id, delete several, propagate the chosen ones) and
Propagate skipping what did not change, driven through the widget with a real viewer and the
real network with random weights at a 128-pixel input."""

from __future__ import annotations

import numpy as np
import pytest
from qt_helpers import click, started, two_moving_cells, wait

pytestmark = pytest.mark.display


stack = two_moving_cells


@pytest.fixture
def two(make_napari_viewer, qtbot, model):
    """Objects 1 and 2 clicked on slice 1, propagated forward."""
    viewer, widget = started(make_napari_viewer, qtbot, model, stack())
    click(qtbot, widget, 1, 14, 16)
    widget.next_object()
    click(qtbot, widget, 1, 28, 42)
    widget.direction.value = "forward"
    widget.propagate()
    wait(qtbot, widget)
    yield viewer, widget
    wait(qtbot, widget)


def test_merging_two_objects_gives_the_first_the_seconds_labels_and_clicks(two, qtbot):
    _, widget = two
    before = widget.labels_layer.data.copy()
    union = np.where(before == 2, 1, before)
    widget.object_list.select_many([1, 2])
    widget.object_list.merge_button.click()
    wait(qtbot, widget)
    np.testing.assert_array_equal(widget.labels_layer.data, union)
    assert widget.session.obj_ids == (1,)
    assert widget.points.features["obj_id"].tolist() == [1, 1]
    assert widget.session.mask_prompted(1) == {1}  # the merged mask prompts it there
    assert sorted(widget.object_list.infos) == [1]
    assert widget.object_list.infos[1].labelled == int((union == 1).any(axis=(1, 2)).sum())
    widget.undo_step()  # one step
    wait(qtbot, widget)
    np.testing.assert_array_equal(widget.labels_layer.data, before)
    assert set(widget.session.obj_ids) == {1, 2} and widget.session.mask_prompted(1) == set()
    assert widget.points.features["obj_id"].tolist() == [1, 2]
    widget.redo_step()
    wait(qtbot, widget)
    np.testing.assert_array_equal(widget.labels_layer.data, union)
    assert widget.session.obj_ids == (1,)


def test_a_new_id_keeps_the_tracking_and_an_id_in_use_is_refused(two, qtbot):
    _, widget = two
    before = widget.labels_layer.data.copy()
    widget.object_list.select_many([2])
    widget.object_list.new_id.setValue(1)
    widget.object_list.relabel_button.click()
    assert "in use" in widget.status.value
    np.testing.assert_array_equal(widget.labels_layer.data, before)  # nothing changed
    widget.relabel_object(2, 7)
    wait(qtbot, widget)
    np.testing.assert_array_equal(widget.labels_layer.data, np.where(before == 2, 7, before))
    assert widget.session.obj_ids == (1, 7) and widget.obj_id.value == 7
    assert sorted(widget.object_list.infos) == [1, 7]
    assert widget.object_list.infos[7].labelled == int((before == 2).any(axis=(1, 2)).sum())
    # the tracker kept object 7's results: re-propagating it is not needed
    widget.propagate()
    assert "Nothing changed" in widget.status.value and not widget.propagating
    widget.undo_step()
    wait(qtbot, widget)
    np.testing.assert_array_equal(widget.labels_layer.data, before)
    assert widget.session.obj_ids == (1, 2)


def test_several_objects_are_deleted_in_one_step(make_napari_viewer, qtbot, model):
    _, widget = started(make_napari_viewer, qtbot, model, stack())
    for row, col in ((14, 16), (28, 42), (30, 20)):
        click(qtbot, widget, 2, row, col)
        widget.next_object()
    before = widget.labels_layer.data.copy()
    widget.object_list.select_many([1, 3])
    widget.object_list.delete_button.click()
    assert widget.session.obj_ids == (2,) and sorted(widget.object_list.infos) == [2]
    assert not np.isin(widget.labels_layer.data, [1, 3]).any()
    widget.undo_step()
    wait(qtbot, widget)
    np.testing.assert_array_equal(widget.labels_layer.data, before)
    assert set(widget.session.obj_ids) == {1, 2, 3}
    wait(qtbot, widget)


def test_propagate_selected_runs_only_the_chosen_object(make_napari_viewer, qtbot, model):
    _, widget = started(make_napari_viewer, qtbot, model, stack())
    click(qtbot, widget, 0, 14, 16)
    widget.next_object()
    click(qtbot, widget, 0, 28, 42)
    widget.direction.value = "forward"
    widget.object_list.select_many([2])
    widget.object_list.propagate_button.click()
    wait(qtbot, widget)
    data = widget.labels_layer.data
    assert all((data[t] == 2).any() for t in range(5))
    assert not (data[1:] == 1).any()  # object 1 was not propagated
    assert widget.object_list.infos[1].labelled == 1


def test_propagate_twice_runs_nothing_the_second_time_and_only_what_changed_later(
    two, qtbot, monkeypatch
):
    _, widget = two
    monkeypatch.setattr("napari_sam2._qt.propagation.ESTIMATE_FROM", 0.0)  # tiny runs too
    shown = []
    widget.propagate()  # nothing new since the first propagation
    assert not widget.propagating
    assert "Nothing changed since the last propagation over slices 1–4" in widget.status.value
    widget.obj_id.value = 2
    click(qtbot, widget, 3, 28, 44)  # a correction of object 2 only
    worker_results = []
    original = widget._show_frame
    widget._show_frame = lambda result: (worker_results.append(result.obj_ids), original(result))
    try:
        widget.propagate()
        shown.append(widget.status.value)
        wait(qtbot, widget)
    finally:
        widget._show_frame = original
    assert "objects [2] only" in shown[0] and "[1] did not change" in shown[0]
    assert "about" in shown[0]  # a time estimate from the first run
    assert worker_results and len(worker_results) == 2  # slices 3 and 4 only
    widget.propagate()
    assert "Nothing changed" in widget.status.value


def test_an_undone_propagation_is_propagated_again(two, qtbot):
    _, widget = two
    widget.undo_step()  # the propagation goes
    wait(qtbot, widget)
    widget.propagate()
    assert widget.propagating or "Propagat" in widget.status.value
    wait(qtbot, widget)
    assert all((widget.labels_layer.data[t] == 1).any() for t in range(1, 5))
