"""Many objects in the widget, driven through napari's layer API: segment everything on a
slice, objects from another Labels layer, and brush strokes that become mask prompts and
survive propagation. The real network with random weights at a 128-pixel input."""

from __future__ import annotations

import numpy as np
import pytest
from qt_helpers import wait

from napari_sam2._qt.objects import painted_objects
from napari_sam2._qt.widget import SAM2Widget
from napari_sam2.engine.stack import StackGeometry

pytestmark = pytest.mark.display


def cells(t=5, h=48, w=64):
    rr, cc = np.mgrid[:h, :w]
    data = np.full((t, h, w), 300, np.uint16)
    for i in range(t):
        for r, c in ((14, 16), (30, 44)):
            data[i][(rr - r - i) ** 2 + (cc - c) ** 2 < 7**2] = 3000
    return data


@pytest.fixture
def flow(make_napari_viewer, qtbot, model):
    viewer = make_napari_viewer()
    image = viewer.add_image(cells(), name="cells")
    viewer.dims.set_point(0, 2)
    widget = SAM2Widget(viewer)
    widget.use_model(model, image)
    wait(qtbot, widget)
    yield viewer, widget
    wait(qtbot, widget)


def test_the_segment_everything_controls_start_at_the_generators_defaults(
    make_napari_viewer, monkeypatch
):
    """The widget's clicks per side, min. quality and min. stability are the generator's
    defaults, read from its signature (the one place they are written), not copies."""
    import inspect

    import napari_sam2 as ns

    init = ns.AutomaticMaskGenerator.__init__
    names = list(inspect.signature(ns.AutomaticMaskGenerator).parameters)
    defaults = dict(zip(names[1:], init.__defaults__, strict=True))
    defaults.update(points_per_side=24, pred_iou_thresh=0.7, stability_score_thresh=0.9)
    monkeypatch.setattr(init, "__defaults__", tuple(defaults.values()))
    tools = SAM2Widget(make_napari_viewer()).objects
    assert tools.points_per_side.value == 24 and "(24: 576)" in tools.points_per_side.tooltip
    assert tools.iou_threshold.value == pytest.approx(0.7)
    assert tools.stability_threshold.value == pytest.approx(0.9)


def test_segment_everything_makes_one_object_per_mask(flow, qtbot):
    _, widget = flow
    tools = widget.objects
    tools.points_per_side.value = 4
    tools.iou_threshold.value = 0.0  # random weights predict low quality: keep every mask
    tools.stability_threshold.value = 0.0
    progress = []
    widget.points.add([[2, 14, 16]])  # object 1, by a click: the new objects come after it
    wait(qtbot, widget)
    tools.segment_everything()
    widget.worker.yielded.connect(progress.append)
    wait(qtbot, widget)
    ids = set(np.unique(widget.labels_layer.data[2])) - {0}
    new = sorted(ids - {1})
    assert new and new[0] >= 2
    assert set(widget.session.obj_ids) == {1, *new}
    assert widget.session.mask_prompted(2) == set(new)
    assert (
        sum(step for step, _ in progress) <= 16
        and "objects on slice 2: done" in widget.status.value
    )
    assert {total for _, total in progress} == {16}  # one window: the 4 x 4 grid
    widget.direction.value = "both"
    widget.propagate()
    wait(qtbot, widget)
    assert "Propagated" in widget.status.value


def test_segment_everything_on_a_big_slice_runs_in_windows_with_its_total(
    make_napari_viewer, qtbot, model
):
    """A slice larger than 1.5 times the model's input is segmented in full-resolution
    windows: the status says so, and the bar counts every window's clicks."""
    viewer = make_napari_viewer()
    image = viewer.add_image(np.tile(cells(t=2), (1, 6, 5)), name="big")  # 288 x 320, input 128
    widget = SAM2Widget(viewer)
    widget.use_model(model, image)
    wait(qtbot, widget)
    tools = widget.objects
    tools.points_per_side.value = 4
    tools.iou_threshold.value = 0.0
    tools.stability_threshold.value = 0.0
    tools.segment_everything()
    assert "in windows of 128 pixels at full resolution" in widget.status.value
    progress = []
    widget.worker.yielded.connect(progress.append)
    wait(qtbot, widget)
    totals = {total for _, total in progress}
    assert len(totals) == 1 and totals.pop() > 16  # several windows of 4 x 4 clicks
    # (random weights may find nothing whole in any window: either outcome is a finished run)
    assert "on slice 0" in widget.status.value and "⚠" not in widget.status.value


def test_segment_everything_can_be_cancelled(flow, qtbot):
    _, widget = flow
    tools = widget.objects
    tools.points_per_side.value = 16
    tools.iou_threshold.value = 0.0
    tools.stability_threshold.value = 0.0
    tools.segment_everything()
    widget.worker.yielded.connect(lambda _: widget.cancel())
    wait(qtbot, widget)
    assert "cancelled; nothing was added" in widget.status.value
    assert not widget.labels_layer.data.any() and widget.session.obj_ids == ()
    assert not widget.cancel_button.enabled


def test_objects_from_a_labels_layer_are_tracked_with_their_ids(flow, qtbot):
    viewer, widget = flow
    seg = np.zeros((5, 48, 64), np.uint16)
    seg[2, 8:20, 10:22] = 7
    seg[2, 24:36, 38:50] = 12
    viewer.add_labels(seg, name="cellpose")
    widget.objects.source.value = viewer.layers["cellpose"]
    widget.objects.objects_from_labels()
    wait(qtbot, widget)
    labels = widget.labels_layer.data
    np.testing.assert_array_equal(labels[2], seg[2])  # the masks, exactly
    assert set(widget.session.obj_ids) == {7, 12}
    widget.direction.value = "both"
    widget.propagate()
    wait(qtbot, widget)
    labels = widget.labels_layer.data
    np.testing.assert_array_equal(labels[2], seg[2])  # kept as given after propagation
    assert all({7, 12} & set(np.unique(labels[t])) for t in range(5))


def test_a_brush_stroke_becomes_the_prompt_and_survives_propagation(flow, qtbot):
    _, widget = flow
    widget.points.add([[2, 14, 16]])  # object 1 by a click
    wait(qtbot, widget)
    widget.direction.value = "forward"
    widget.propagate()
    wait(qtbot, widget)
    layer = widget.labels_layer
    # the user paints object 1 bigger on slice 3 and paints a new object 5 there
    layer.brush_size = 5
    for col in range(30, 40, 2):
        layer.paint((3, 8, col), 1)
    layer.paint((3, 40, 8), 5)
    wait(qtbot, widget)
    painted = layer.data[3].copy()
    assert widget.session.mask_prompted(3) == {1, 5}
    assert set(widget.session.obj_ids) == {1, 5}
    widget.propagate()  # forward again, from the corrected slice
    wait(qtbot, widget)
    np.testing.assert_array_equal(layer.data[3], painted)  # the painting is never overwritten
    assert (layer.data[4] == 5).any()  # and the new object is followed


def test_our_own_writes_are_not_taken_for_painting(flow, qtbot):
    _, widget = flow
    widget.points.add([[1, 14, 16]])
    wait(qtbot, widget)
    assert (widget.labels_layer.data[1] == 1).any()  # written through the undo history
    assert widget.session.mask_prompted(1) == set()


def test_paint_atoms_name_the_slices_and_ids_touched():
    geometry = StackGeometry((4, 3, 20, 30), stack_axis=0, fixed={1: 2})
    on_track = (np.array([1, 1, 3]), np.array([2, 2, 2]), np.array([5, 6, 7]), np.array([1, 1, 1]))
    other_z = (np.array([0]), np.array([0]), np.array([5]), np.array([5]))
    atoms = [(on_track, np.array([0, 4, 9]), 6), (other_z, np.array([0]), 8)]
    assert painted_objects(atoms, geometry) == {1: ({6}, {4}), 3: ({6}, {9})}
