"""The widget a biologist can live in: every broken state an audit found, reproduced and
fixed — clicks outside the image, prompts during a propagation, closing the dock or napari
mid-run, removing or changing the image, big data, layout, errors that stay, stale slices after
an undo, new objects drawn as boxes by mistake — driven through napari's layer API."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from qt_helpers import click, moving_and_still_cell, on_each_slice, started, wait

from napari_sam2._qt import labels_data
from napari_sam2._qt.widget import SAM2Widget

pytestmark = pytest.mark.display


stack = moving_and_still_cell


@pytest.fixture
def flow(make_napari_viewer, qtbot, model):
    viewer, widget = started(make_napari_viewer, qtbot, model, stack())
    yield viewer, widget
    wait(qtbot, widget)


# 1 ------------------------------------------------------------------------------------------
def test_a_click_outside_the_image_is_removed_and_poisons_nothing(flow, qtbot):
    _, widget = flow
    click(qtbot, widget, 2, 15, 20)  # object 1, fine
    widget.next_object()
    click(qtbot, widget, 2, -30, 200)  # object 2, outside the image
    assert len(widget.points.data) == 1  # refused at once
    assert "outside the image" in widget.status.value and "removed" in widget.status.value
    click(qtbot, widget, 2, 30, 44)  # object 2 again, inside: the slice still works
    labels = widget.labels_layer.data[2]
    assert {1, 2} <= set(np.unique(labels)) and "Ready" in widget.status.value


# 2 ------------------------------------------------------------------------------------------
def test_a_new_object_during_a_propagation_is_tracked_by_the_next_one(flow, qtbot):
    _, widget = flow
    click(qtbot, widget, 0, 15, 20)
    widget.direction.value = "forward"
    added = []

    def add_while_running(result):  # on the first slice shown, while the rest are tracked
        if not added:
            added.append(result.frame)
            widget.next_object()
            widget.points.add([[4, 30, 44]])

    with on_each_slice(widget, add_while_running):
        widget.propagate()
        wait(qtbot, widget)
    assert added == [0]
    assert "Propagated over 6 slices" in widget.status.value  # the truth, no failure
    assert "followed by the next Propagate" in widget.status.value
    assert (widget.labels_layer.data[4] == 2).any()  # the new object's click shows at once
    widget.propagate()
    wait(qtbot, widget)
    assert (widget.labels_layer.data[5] == 2).any()  # and is followed by the next propagation


# 3 ------------------------------------------------------------------------------------------
def test_closing_the_dock_ends_the_session_and_reopening_resumes(make_napari_viewer, qtbot, model):
    viewer = make_napari_viewer()
    image = viewer.add_image(stack(), name="cells")
    widget = SAM2Widget(viewer)
    dock = viewer.window.add_dock_widget(widget, name="SAM 2")
    widget.use_model(model, image)
    wait(qtbot, widget)
    click(qtbot, widget, 1, 15, 20)
    tracker = widget.session.tracker
    layers = [layer.name for layer in viewer.layers]
    widget.propagate()
    viewer.window.remove_dock_widget(dock)  # the user closes the dock mid-run
    qtbot.waitUntil(lambda: tracker.closed, timeout=30_000)
    qtbot.wait(200)
    before = np.asarray(viewer.layers["SAM2 labels"].data).copy()
    viewer.layers["SAM2 clicks"].add([[3, 30, 44]])  # the closed widget no longer reacts
    qtbot.wait(300)
    np.testing.assert_array_equal(viewer.layers["SAM2 labels"].data, before)

    again = SAM2Widget(viewer)
    assert "has SAM2 layers: Start resumes from them" in again.status.value
    again.use_model(model, image)
    wait(qtbot, again)
    assert [layer.name for layer in viewer.layers] == layers  # no second set of layers
    assert again.points is viewer.layers["SAM2 clicks"] and set(again.session.obj_ids) == {1}
    assert "resumed from the SAM2 layers" in again.status.value


# 4 ------------------------------------------------------------------------------------------
def test_closing_napari_mid_propagation_is_quiet(make_napari_viewer, qtbot, model):
    viewer = make_napari_viewer()
    image = viewer.add_image(stack(t=12), name="cells")
    widget = SAM2Widget(viewer)
    viewer.window.add_dock_widget(widget, name="SAM 2")
    widget.use_model(model, image)
    wait(qtbot, widget)
    click(qtbot, widget, 0, 15, 20)
    tracker = widget.session.tracker
    widget.propagate()
    viewer.close()  # pytest-qt fails the test on any exception raised in a Qt callback
    qtbot.waitUntil(lambda: tracker.closed, timeout=30_000)
    qtbot.wait(500)


# 5 ------------------------------------------------------------------------------------------
def test_removing_the_image_mid_run_ends_the_session_and_says_so(flow, qtbot):
    viewer, widget = flow
    click(qtbot, widget, 0, 15, 20)
    widget.propagate()
    viewer.layers.remove("cells")
    wait(qtbot, widget)
    assert widget.session is None and not widget.propagate_button.enabled
    assert "'cells' was removed: the session ended" in widget.status.value
    assert "SAM2 labels" in viewer.layers  # the results stay


def test_choosing_another_image_after_start_ends_the_session(flow, qtbot):
    viewer, widget = flow
    viewer.add_image(stack(t=3), name="other")
    widget.image.value = viewer.layers["other"]
    assert widget.session is None
    assert "changed to 'other'" in widget.status.value and "Press Start" in widget.status.value


# 6 ------------------------------------------------------------------------------------------
def test_big_4d_data_gets_labels_that_fit(make_napari_viewer, qtbot, model):
    viewer = make_napari_viewer()
    data = da.zeros((10, 40, 1024, 1024), dtype=np.uint16, chunks=(1, 1, 1024, 1024))
    image = viewer.add_image(data, name="big")  # dense uint32 labels would be 1.7 GB
    widget = SAM2Widget(viewer)
    widget.stack_axis.value = 1  # along Z, at the T of the slider
    widget.use_model(model, image)
    wait(qtbot, widget)
    labels = widget.labels_layer.data
    assert not isinstance(labels, np.ndarray) and labels.dtype == np.uint16
    assert widget.labels_data.kind == "memory"
    t = widget.geometry.fixed[0]
    widget.points.add([[t, 5, 500, 500]])
    wait(qtbot, widget)
    stored = [k for k in widget.labels_data.array.store._store_dict if "/c/" in k]
    assert len(stored) <= 1  # at most the one slice written


def test_labels_go_to_disk_beyond_the_ram_budget(tmp_path):
    from napari_sam2.engine.stack import StackGeometry

    geometry = StackGeometry((100, 60, 512, 512), stack_axis=0, fixed={1: 3})
    data = labels_data.allocate(geometry, max_id=70_000, ram_limit=10 * 2**20)
    assert data.kind == "disk" and data.array.dtype == np.uint32 and data.folder.is_dir()
    geometry.label_frames(data.array)[5] = 7
    assert data.array[5, 3, 0, 0] == 7
    folder = data.folder
    data.close()
    assert not folder.exists()


def test_a_failed_allocation_is_reported_and_the_widget_stays_usable(
    make_napari_viewer, qtbot, model, monkeypatch
):
    viewer = make_napari_viewer()
    image = viewer.add_image(stack(), name="cells")
    widget = SAM2Widget(viewer)

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(labels_data, "allocate", no_memory)
    widget.use_model(model, image)
    assert widget.session is None and "Not enough memory" in widget.status.value
    monkeypatch.undo()
    widget.use_model(model, image)  # and it works once memory is there
    assert widget.session is not None


# 7: in test_screenshot.py (a real window) ----------------------------------------------------
# 8 ------------------------------------------------------------------------------------------
def test_errors_stay_until_an_action_succeeds_in_plain_words(flow, qtbot):
    _, widget = flow
    widget.propagate()  # no object yet
    assert "click on an object first" in widget.status.value
    assert "add_prompt" not in widget.status.value and "(row, col)" not in widget.status.value
    widget.viewer.dims.set_point(0, 3)  # moving the slider embeds in the background...
    wait(qtbot, widget)
    assert "click on an object first" in widget.status.value  # ...and leaves the error shown
    click(qtbot, widget, 3, 15, 20)
    assert "Ready" in widget.status.value  # a success replaces it


# 9 ------------------------------------------------------------------------------------------
def test_undo_after_propagating_resegments_and_marks_slices_stale(flow, qtbot):
    _, widget = flow
    click(qtbot, widget, 1, 15, 20)
    widget.direction.value = "forward"
    widget.propagate()
    wait(qtbot, widget)
    click(qtbot, widget, 1, 2, 2)  # a stray extra click on the prompted slice
    with_extra = widget.labels_layer.data[1].copy()
    widget.undo_last_click()
    wait(qtbot, widget)
    assert "slice 1 segmented again" in widget.status.value
    assert "press Propagate to update them" in widget.status.value
    assert not np.array_equal(widget.labels_layer.data[1], with_extra)


# 10 -----------------------------------------------------------------------------------------
def test_new_object_goes_back_to_clicking_and_tiny_boxes_are_clicks(flow, qtbot):
    viewer, widget = flow
    viewer.layers.selection.active = widget.boxes
    widget.boxes.mode = "add_rectangle"
    widget.next_object()
    assert viewer.layers.selection.active is widget.points and widget.points.mode == "add"
    widget.boxes.add_rectangles(np.array([[2, 15, 20], [2, 15, 21], [2, 16, 21], [2, 16, 20]]))
    wait(qtbot, widget)
    assert len(widget.boxes.data) == 0 and len(widget.points.data) == 1
    assert widget.points.features["obj_id"].tolist() == [2]
    assert (widget.labels_layer.data[2] == 2).any()


# 11 -----------------------------------------------------------------------------------------
def test_small_things(make_napari_viewer, qtbot, model):
    viewer = make_napari_viewer()
    image = viewer.add_image(stack(t=32), name="cells")
    widget = SAM2Widget(viewer)
    viewer.dims.axis_labels = ("z", "y", "x")
    widget.stack_axis.reset_choices()
    assert widget.stack_axis.choices == (0,)
    assert widget.stack_axis.native.itemText(0) == "z · axis 0 (32 slices)"
    widget.use_model(model, image)
    wait(qtbot, widget)
    click(qtbot, widget, 16, 15, 20)
    widget.direction.value = "both"
    widget.propagate()
    assert "over 32 slices" in widget.status.value  # not 33: the prompted slice counts once
    wait(qtbot, widget)
    assert "Propagated over 32 slices (both directions)" in widget.status.value
    single = make_napari_viewer()
    photo = single.add_image(stack(t=1)[0], name="photo")
    w2 = SAM2Widget(single)
    w2.use_model(model, photo)
    assert not w2.propagate_button.enabled  # nothing to propagate through
    large = make_napari_viewer()
    big = large.add_image(np.zeros((2, 2048, 2048), np.uint8), name="large")
    w3 = SAM2Widget(large)
    w3.use_model(model, big)
    assert w3.points.current_size >= 25  # visible at 2048²


# annotator ------------------------------------------------------------------------------------
def test_keyboard_shortcuts(flow, qtbot):
    from app_model.types import KeyBinding

    viewer, widget = flow
    press = lambda key: viewer.keymap[KeyBinding.from_str(key)](viewer)  # noqa: E731
    click(qtbot, widget, 2, 15, 20)
    press("N")
    assert widget.obj_id.value == 2
    press("I")
    assert widget.negative.value
    press("I")
    press(",")
    assert widget.obj_id.value == 1
    press("U")
    wait(qtbot, widget)
    assert len(widget.points.data) == 0
    click(qtbot, widget, 2, 15, 20)
    press("G")
    press("H")
    wait(qtbot, widget)
    assert "Stopped after" in widget.status.value or "Propagated" in widget.status.value
    assert "shortcut: N" in widget.new_object.tooltip


def test_the_object_list(flow, qtbot):
    viewer, widget = flow
    click(qtbot, widget, 1, 15, 20)
    widget.next_object()
    click(qtbot, widget, 3, 30, 44)
    table = widget.object_list.table
    assert table.rowCount() == 2
    assert [table.item(r, 2).text() for r in range(2)] == ["1", "3"]  # prompted slices
    table.selectRow(1)
    assert widget.obj_id.value == 2
    table.item(0, 1).setText("nucleus")
    assert widget.names[1] == "nucleus"
    widget.object_list.set_visible(2, False)  # hidden: drawn transparent, labels kept
    assert widget.labels_layer.colormap.map(2)[3] == 0 and (widget.labels_layer.data == 2).any()
    widget.object_list.select(1)
    widget.object_list.goto(1)
    assert widget.current_frame() == 1
    widget.object_list.select(2)
    widget.object_list._delete()
    wait(qtbot, widget)
    assert table.rowCount() == 1 and not (widget.labels_layer.data == 2).any()
    assert widget.session.obj_ids == (1,)


def test_save_close_reopen_resume_propagate(
    make_napari_viewer, qtbot, random_tiny_checkpoint, tmp_path
):
    folder = tmp_path / "session"

    def widget_on(viewer):
        image = viewer.add_image(stack(), name="cells")
        widget = SAM2Widget(viewer)
        widget.checkpoint.value = str(random_tiny_checkpoint)
        widget.device.value = "cpu"
        widget.input_size.value = 256
        widget.session_folder.value = str(folder)
        return image, widget

    viewer = make_napari_viewer()
    _, widget = widget_on(viewer)
    widget.start()
    wait(qtbot, widget)
    click(qtbot, widget, 1, 15, 20)
    widget.boxes.add_rectangles(np.array([[3, 24, 36], [3, 24, 52], [3, 36, 52], [3, 36, 36]]))
    wait(qtbot, widget)
    widget._rename(1, "cell")
    widget.save_session()
    wait(qtbot, widget)  # the slices are hashed and the files written in a worker
    assert "Session saved" in widget.status.value
    saved_labels = np.asarray(widget.labels_layer.data).copy()
    viewer.close()

    viewer = make_napari_viewer()
    _, widget = widget_on(viewer)
    widget.load_session()
    wait(qtbot, widget)
    assert "Session resumed" in widget.status.value
    np.testing.assert_array_equal(widget.labels_layer.data, saved_labels)
    assert len(widget.points.data) == 1 and len(widget.boxes.data) == 1
    assert widget.names == {1: "cell"} and set(widget.session.obj_ids) == {1}
    widget.direction.value = "forward"
    widget.propagate()
    wait(qtbot, widget)
    assert "Propagated" in widget.status.value

    from napari_sam2.io import read_prompts  # the saved prompts are what the CLI reads

    prompts = read_prompts(folder / "prompts.csv")
    assert [(p.frame, p.obj_id, p.box is not None) for p in prompts] == [
        (1, 1, False),
        (3, 1, True),
    ]
