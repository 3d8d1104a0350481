"""Undo and redo in the widget, driven as a user would (clicks through the Points layer, Ctrl+Z
through napari's key handling): what the labels show stays what the tracker will propagate, a
propagation never vanishes with one key, and the object list stays right. The real network with
random weights at a 128-pixel input."""

from __future__ import annotations

import numpy as np
import pytest
from qt_helpers import click, started, two_moving_cells, wait

from napari_sam2.engine.labels import compose_labels

pytestmark = pytest.mark.display


stack = two_moving_cells


@pytest.fixture
def flow(make_napari_viewer, qtbot, model):
    viewer, widget = started(make_napari_viewer, qtbot, model, stack())
    yield viewer, widget
    wait(qtbot, widget)


def press(viewer, layer, key: str) -> None:
    """A key pressed while ``layer`` is the active layer, through napari's key handling."""
    viewer.layers.selection.active = layer
    viewer.window._qt_viewer._key_map_handler.press_key(key)


def propagate(qtbot, widget, direction="forward"):
    widget.direction.value = direction
    widget.propagate()
    wait(qtbot, widget)


def shown_by_tracker(widget, frame):
    """The labels the tracker's current prompts give on ``frame``."""
    current = np.zeros(widget.geometry.spatial_shape, widget.labels_layer.data.dtype)
    return compose_labels(current, widget.session.tracker.result(frame))


def test_undoing_the_only_click_of_a_propagated_object_keeps_its_labels(flow, qtbot):
    viewer, widget = flow
    click(qtbot, widget, 0, 14, 16)
    propagate(qtbot, widget)
    propagated = widget.labels_layer.data.copy()
    assert all((propagated[t] == 1).any() for t in range(5))
    widget.undo_last_click()  # U: the object's only click
    wait(qtbot, widget)
    assert len(widget.points.data) == 0 and widget.session.obj_ids == ()
    np.testing.assert_array_equal(widget.labels_layer.data, propagated)  # nothing vanished
    assert "kept" in widget.status.value and "Delete object" in widget.status.value
    assert widget.object_list.infos[1].labelled == 5
    press(viewer, widget.labels_layer, "Control-Z")  # the click comes back, and is tracked
    wait(qtbot, widget)
    assert len(widget.points.data) == 1 and widget.session.obj_ids == (1,)
    np.testing.assert_array_equal(widget.labels_layer.data, propagated)


def test_an_unpropagated_object_loses_its_labels_with_its_click_and_the_list_follows(flow, qtbot):
    _, widget = flow
    click(qtbot, widget, 2, 14, 16)
    assert widget.object_list.infos[1].labelled == 1
    widget.points.selected_data = {0}
    widget.points.remove_selected()  # Delete on the point
    wait(qtbot, widget)
    assert not widget.labels_layer.data.any()
    assert 1 not in widget.object_list.infos  # not "—, 1 slice" any more
    widget.undo_step()
    wait(qtbot, widget)
    assert (widget.labels_layer.data[2] == 1).any() and widget.object_list.infos[1].labelled == 1


def test_ctrl_z_on_the_labels_undoes_the_click_and_the_tracker_follows(flow, qtbot):
    viewer, widget = flow
    click(qtbot, widget, 2, 14, 16)
    one_click = widget.labels_layer.data.copy()
    widget.negative.value = True
    click(qtbot, widget, 2, 16, 18)
    two_clicks = widget.labels_layer.data.copy()
    assert not np.array_equal(one_click, two_clicks)
    press(viewer, widget.labels_layer, "Control-Z")  # napari's own key on SAM2 labels
    wait(qtbot, widget)
    assert len(widget.points.data) == 1  # the click went with its pixels
    np.testing.assert_array_equal(widget.labels_layer.data, one_click)
    np.testing.assert_array_equal(shown_by_tracker(widget, 2), one_click[2])
    press(viewer, widget.points, "Control-Shift-Z")  # redo, from the clicks layer
    wait(qtbot, widget)
    assert widget.points.features["positive"].tolist() == [True, False]
    np.testing.assert_array_equal(widget.labels_layer.data, two_clicks)
    np.testing.assert_array_equal(shown_by_tracker(widget, 2), two_clicks[2])


def test_a_propagation_is_undone_and_redone(flow, qtbot):
    _, widget = flow
    click(qtbot, widget, 0, 14, 16)
    clicked = widget.labels_layer.data.copy()
    propagate(qtbot, widget)
    propagated = widget.labels_layer.data.copy()
    widget.undo_step()
    wait(qtbot, widget)
    np.testing.assert_array_equal(widget.labels_layer.data, clicked)
    assert widget.object_list.infos[1].labelled == 1
    assert len(widget.points.data) == 1  # the click stays: only the propagation went
    widget.redo_step()
    wait(qtbot, widget)
    np.testing.assert_array_equal(widget.labels_layer.data, propagated)
    assert widget.object_list.infos[1].labelled == 5
    assert widget.history.done[-1].what == "propagation"


def test_deleting_the_current_object_moves_on_and_is_undoable(flow, qtbot):
    _, widget = flow
    click(qtbot, widget, 1, 14, 16)
    widget.next_object()
    click(qtbot, widget, 1, 28, 42)
    widget.next_object()
    click(qtbot, widget, 3, 28, 40)
    assert widget.obj_id.value == 3
    propagate(qtbot, widget, "both")
    before = widget.labels_layer.data.copy()
    widget.names[3] = "nucleus"
    widget.delete_object(3)
    assert widget.obj_id.value == 2  # not the deleted id
    assert sorted(widget.object_list.infos) == [1, 2]
    assert 3 not in widget.labels_layer.data and 3 not in widget.session.obj_ids
    widget.undo_step()
    wait(qtbot, widget)
    np.testing.assert_array_equal(widget.labels_layer.data, before)
    assert 3 in widget.session.obj_ids and widget.names[3] == "nucleus"
    assert widget.object_list.infos[3].prompted == [3]
    widget.redo_step()
    wait(qtbot, widget)
    assert 3 not in widget.labels_layer.data and 3 not in widget.session.obj_ids


def test_a_brush_stroke_and_its_prompt_are_undone_together(flow, qtbot):
    viewer, widget = flow
    click(qtbot, widget, 2, 14, 16)
    clicked = widget.labels_layer.data.copy()
    layer = widget.labels_layer
    layer.brush_size = 5
    layer.paint((3, 30, 20), 5)  # a new object painted on slice 3
    wait(qtbot, widget)
    painted = layer.data.copy()
    assert widget.session.mask_prompted(3) == {5} and 5 in widget.session.obj_ids
    press(viewer, layer, "Control-Z")
    wait(qtbot, widget)
    np.testing.assert_array_equal(layer.data, clicked)
    assert widget.session.mask_prompted(3) == set() and widget.session.obj_ids == (1,)
    assert 5 not in widget.object_list.infos
    press(viewer, layer, "Control-Shift-Z")
    wait(qtbot, widget)
    np.testing.assert_array_equal(layer.data, painted)
    assert widget.session.mask_prompted(3) == {5} and 5 in widget.session.obj_ids


def test_undo_waits_for_a_propagation_and_says_so(flow, qtbot):
    _, widget = flow
    click(qtbot, widget, 0, 14, 16)
    widget.direction.value = "forward"
    widget.propagate()
    widget.undo_step()
    assert "Cancel the propagation first" in widget.status.value
    wait(qtbot, widget)
    assert len(widget.points.data) == 1


def test_a_step_keeps_crops_of_what_changed_and_forgets_old_steps_past_its_budget():
    from napari_sam2._qt.history import History, Step, frame_patch
    from napari_sam2.engine.stack import StackGeometry

    geometry = StackGeometry((4, 100, 200), stack_axis=0)
    old = np.zeros((100, 200), np.uint16)
    new = old.copy()
    new[10:20, 30:35] = 7
    patch = frame_patch(geometry, 2, old, new)
    assert patch.region == (slice(2, 3), slice(10, 20), slice(30, 35))
    assert patch.before.shape == (1, 10, 5) and (patch.after == 7).all()
    history = History(budget=3 * patch.nbytes)
    steps = [history.push(Step(f"step {i}")) for i in range(3)]
    for step in steps:
        assert history.record(step, patch) is None
    big = history.push(Step("big"))
    assert history.record(big, patch) is None  # the oldest step went
    assert [s.what for s in history.done] == ["step 1", "step 2", "big"]
    assert "too much to keep" in history.record(big, frame_patch(geometry, 1, old, new + 1))
    assert history.done == [] and big.dropped
