"""The dock widget driven as a user would: add an image, click through the layer API, wait for
the workers, and check the Labels layer. A real SAM 2 network with random weights at a small
input size (no mocks)."""

from __future__ import annotations

import numpy as np
import pytest
from qt_helpers import click, on_each_slice, started, wait

from napari_sam2._qt import layers as L
from napari_sam2._qt.widget import SAM2Widget

pytestmark = pytest.mark.display  # napari's canvas needs OpenGL: Xvfb in CI (scripts/test.sh)


def stack(t=6, h=40, w=56):
    rr, cc = np.mgrid[:h, :w]
    data = np.full((t, h, w), 300, np.uint16)
    for i in range(t):
        data[i][(rr - 15 - i) ** 2 + (cc - 20 - i) ** 2 < 8**2] = 3000
    return data


@pytest.fixture
def flow(make_napari_viewer, qtbot, model):
    viewer, widget = started(make_napari_viewer, qtbot, model, stack(), scale=(4.0, 1.0, 1.0))
    yield viewer, widget
    wait(qtbot, widget)


def test_click_segments_that_slice_only(flow, qtbot):
    viewer, widget = flow
    assert {"SAM2 clicks", "SAM2 boxes", "SAM2 labels"} <= {layer.name for layer in viewer.layers}
    click(qtbot, widget, 2, 17, 22)
    labels = widget.labels_layer.data
    assert (labels[2] == 1).any()
    assert not np.delete(labels, 2, axis=0).any()
    assert widget.points.features[L.OBJ_ID].tolist() == [1]
    assert widget.points.features[L.POSITIVE].tolist() == [True]


def test_new_object_negative_click_and_removal(flow, qtbot):
    viewer, widget = flow
    click(qtbot, widget, 1, 16, 21)
    widget.next_object()
    assert widget.obj_id.value == 2
    click(qtbot, widget, 1, 35, 50)
    labels = widget.labels_layer.data
    assert {1, 2} <= set(np.unique(labels[1]))
    widget.negative.value = True
    click(qtbot, widget, 1, 5, 5)
    assert widget.points.features[L.POSITIVE].tolist() == [True, True, False]
    # deleting object 2's points removes its labels; object 1 stays
    widget.points.selected_data = {1, 2}
    widget.points.remove_selected()
    wait(qtbot, widget)
    assert 2 not in np.unique(widget.labels_layer.data)
    assert (widget.labels_layer.data[1] == 1).any()


def test_undo_last_click(flow, qtbot):
    _, widget = flow
    click(qtbot, widget, 3, 18, 23)
    before = widget.labels_layer.data.copy()
    click(qtbot, widget, 3, 2, 2)
    widget.undo_last_click()
    wait(qtbot, widget)
    assert len(widget.points.data) == 1
    np.testing.assert_array_equal(widget.labels_layer.data, before)


def test_propagate_fills_every_slice_and_keeps_other_labels(flow, qtbot):
    _, widget = flow
    widget.labels_layer.data[:, 0, 0] = 9  # drawn by hand: must survive
    click(qtbot, widget, 0, 15, 20)
    widget.direction.value = "forward"
    widget.propagate()
    wait(qtbot, widget)
    labels = widget.labels_layer.data
    assert all((labels[t] == 1).any() for t in range(6))
    assert (labels[:, 0, 0] == 9).all()
    assert "Propagated over 6 slices" in widget.status.value


def test_cancel_leaves_a_consistent_partial_result_and_propagate_continues(flow, qtbot):
    _, widget = flow
    click(qtbot, widget, 0, 15, 20)
    widget.direction.value = "forward"
    seen = []

    def cancel_at_once(result):
        seen.append(result.frame)
        widget.cancel()

    with on_each_slice(widget, cancel_at_once):
        widget.propagate()
        wait(qtbot, widget)
    assert seen and seen[0] == 0
    labels = widget.labels_layer.data
    done = [t for t in range(6) if (labels[t] == 1).any()]
    assert done == list(range(len(done))) and len(done) < 6  # a prefix of the stack
    assert "Stopped after" in widget.status.value
    widget.propagate()
    wait(qtbot, widget)
    assert all((widget.labels_layer.data[t] == 1).any() for t in range(6))


def test_box_prompt(flow, qtbot):
    _, widget = flow
    widget.boxes.add_rectangles(np.array([[4, 8, 12], [4, 8, 30], [4, 24, 30], [4, 24, 12]]))
    wait(qtbot, widget)
    assert (widget.labels_layer.data[4] == 1).any()


def test_time_lapse_of_volumes_tracks_along_the_chosen_axis(make_napari_viewer, qtbot, model):
    viewer = make_napari_viewer()
    data = np.stack([stack(t=3)] * 4)  # (T=4, Z=3, Y, X)
    image = viewer.add_image(data, name="tzyx")
    viewer.dims.current_step = (0, 2, 0, 0)
    widget = SAM2Widget(viewer)
    widget.stack_axis.value = 0  # track along T, Z fixed at its slider (2)
    widget.use_model(model, image)
    assert widget.geometry.stack_axis == 0 and widget.geometry.fixed == {1: 2}
    widget.points.add([[1, 2, 15, 20]])
    wait(qtbot, widget)
    widget.direction.value = "both"
    widget.propagate()
    wait(qtbot, widget)
    labels = widget.labels_layer.data
    assert all((labels[t, 2] == 1).any() for t in range(4))
    assert not labels[:, :2].any()  # other Z slices untouched


def test_start_without_an_image_says_what_to_do(make_napari_viewer):
    widget = SAM2Widget(make_napari_viewer())
    widget.start()
    assert widget.session is None


def test_points_map_through_world_coordinates():
    """A Points layer with its own scale and translate still lands on the right pixel."""
    from napari.layers import Image, Points

    from napari_sam2.engine.stack import StackGeometry

    image = Image(np.zeros((5, 30, 40)), scale=(4.0, 0.5, 0.5), translate=(0, 10, 0))
    points = Points(
        np.array([[8.0, 15.0, 5.0]]),
        scale=(2.0, 1.0, 1.0),
        translate=(0, 0, 0),
        features={L.OBJ_ID: [3], L.POSITIVE: [False]},
    )
    geometry = StackGeometry(image.data.shape, stack_axis=0)
    (row,) = L.point_rows(points, image, geometry)
    # world = (16, 15, 5) -> image data = (16/4, (15-10)/0.5, 5/0.5) = (4, 10, 10)
    assert (row.frame, row.row, row.col, row.obj_id, row.positive) == (4, 10.0, 10.0, 3, False)


def test_start_loads_the_checkpoint_in_the_background(
    make_napari_viewer, qtbot, random_tiny_checkpoint
):
    """The real Start path: an official-format file, loaded on a worker thread."""
    viewer = make_napari_viewer()
    viewer.add_image(stack(t=3), name="cells")
    widget = SAM2Widget(viewer)
    widget.checkpoint.value = str(random_tiny_checkpoint)
    widget.device.value = "cpu"
    widget.input_size.value = 256
    widget.start()
    wait(qtbot, widget)
    assert widget.session is not None
    assert widget.session.tracker.model.config.image_size == 256
    assert "ready" in widget.status.value
    widget.points.add([[1, 15, 20]])
    wait(qtbot, widget)
    assert widget.labels_layer.data[1].any() or widget.session.tracker.prompted_frames() == [1]


def test_a_missing_checkpoint_is_reported_and_nothing_is_created(
    make_napari_viewer, qtbot, tmp_path
):
    viewer = make_napari_viewer()
    viewer.add_image(stack(t=3), name="cells")
    widget = SAM2Widget(viewer)
    widget.checkpoint.value = str(tmp_path / "nope.pt")
    widget.start()
    wait(qtbot, widget)
    assert widget.session is None
    assert "nope.pt" in widget.status.value
    assert [layer.name for layer in viewer.layers] == ["cells"]


def test_shift_click_adds_a_negative_point(flow, qtbot):
    """Through napari's own mouse-event path: a click in add mode, with and without Shift."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks
    from vispy.util import keys

    _, widget = flow

    def click_at(position, modifiers):
        for kind, handler in (
            ("mouse_press", mouse_press_callbacks),
            ("mouse_release", mouse_release_callbacks),
        ):
            event = read_only_mouse_event(
                type=kind, position=position, modifiers=modifiers, dims_displayed=[1, 2]
            )
            handler(widget.points, event)

    widget.points.mode = "add"
    click_at((8.0, 10, 10), [])  # world coordinates: slice 2 at z scale 4
    click_at((8.0, 20, 20), [keys.SHIFT])
    wait(qtbot, widget)
    assert widget.points.features[L.POSITIVE].tolist() == [True, False]
    assert widget.points.data[:, 0].tolist() == [2.0, 2.0]


def test_single_rgb_image(make_napari_viewer, qtbot, model):
    viewer = make_napari_viewer()
    rgb = np.zeros((40, 56, 3), np.uint8)
    rgb[10:30, 15:40] = (200, 120, 40)
    image = viewer.add_image(rgb, name="photo")
    assert image.rgb
    widget = SAM2Widget(viewer)
    widget.use_model(model, image)
    assert widget.geometry.num_frames == 1 and widget.labels_layer.data.shape == (40, 56)
    widget.points.add([[20, 25]])
    wait(qtbot, widget)
    assert (widget.labels_layer.data == 1).any()
    widget.propagate()
    wait(qtbot, widget)
    assert "Propagated" in widget.status.value


def test_multiscale_image_uses_its_finest_level(make_napari_viewer, qtbot, model):
    viewer = make_napari_viewer()
    full = stack(t=3)
    image = viewer.add_image([full, full[:, ::2, ::2]], multiscale=True, name="pyramid")
    widget = SAM2Widget(viewer)
    widget.use_model(model, image)
    assert widget.labels_layer.data.shape == full.shape
    widget.points.add([[1, 15, 20]])
    wait(qtbot, widget)
    assert (widget.labels_layer.data[1] == 1).any()


def test_an_embeddings_store_is_filled_and_reused(make_napari_viewer, qtbot, model, tmp_path):
    store = tmp_path / "cells.embeddings.zarr"
    data = stack(t=3)

    def session():
        viewer = make_napari_viewer()
        image = viewer.add_image(data, name="cells")
        widget = SAM2Widget(viewer)
        widget.embeddings.value = str(store)
        widget.use_model(model, image)
        wait(qtbot, widget)
        widget.points.add([[1, 15, 20]])
        wait(qtbot, widget)
        return widget

    first = session()
    assert (first.labels_layer.data[1] == 1).any()
    done = first.session.tracker.embeddings.frames_done
    assert done >= 1 and store.is_dir()
    first.end_session()
    calls = []
    hook = model.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        second = session()
    finally:
        hook.remove()
    assert calls == [] and (second.labels_layer.data[1] == 1).any()


def test_an_embeddings_store_of_another_image_is_refused(
    make_napari_viewer, qtbot, model, tmp_path
):
    import napari_sam2 as ns

    store = tmp_path / "other.zarr"
    ns.VideoTracker(model, stack(t=3)[:, ::-1].copy(), embeddings=store).precompute([0])
    viewer = make_napari_viewer()
    image = viewer.add_image(stack(t=3), name="cells")
    widget = SAM2Widget(viewer)
    widget.embeddings.value = str(store)
    widget.use_model(model, image)
    assert widget.session is None
    assert "made for something else" in widget.status.value
    assert not widget.propagate_button.enabled
