"""Saving and loading sessions in the widget: every object keeps its own clicks, a damaged or
foreign folder is refused with nothing restored (and the status says so), loading twice reuses
the SAM2 layers, the saved checkpoint is used offline, and a labels-only session lists its
objects."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from qt_helpers import click, moving_and_still_cell, wait

from napari_sam2._qt.widget import SAM2Widget

pytestmark = pytest.mark.display


def stack(t=5):
    return moving_and_still_cell(t)


def widget_on(viewer, checkpoint, folder, data=None):
    viewer.add_image(stack() if data is None else data, name="cells")
    widget = SAM2Widget(viewer)
    widget.checkpoint.value = str(checkpoint)
    widget.device.value = "cpu"
    widget.input_size.value = 256
    widget.session_folder.value = str(folder)
    return widget


def load(qtbot, widget):
    widget.load_session()
    wait(qtbot, widget)


@pytest.fixture
def two_objects(make_napari_viewer, qtbot, random_tiny_checkpoint, tmp_path):
    """A session saved with objects 1 and 2 clicked on slice 1 (the checkpoint is a copy that
    a test may remove); the labels and clicks it holds."""
    checkpoint = tmp_path / "weights" / "sam2.1_hiera_tiny.pt"
    checkpoint.parent.mkdir()
    shutil.copy(random_tiny_checkpoint, checkpoint)
    folder = tmp_path / "session"
    viewer = make_napari_viewer()
    widget = widget_on(viewer, checkpoint, folder)
    widget.start()
    wait(qtbot, widget)
    click(qtbot, widget, 1, 15, 20)
    widget.next_object()
    click(qtbot, widget, 1, 30, 44)
    widget.save_session()
    wait(qtbot, widget)
    assert "Session saved" in widget.status.value
    labels = np.asarray(widget.labels_layer.data).copy()
    ids = widget.points.features["obj_id"].tolist()
    assert {1, 2} <= set(np.unique(labels[1]).tolist()) and ids == [1, 2]
    viewer.close()
    return folder, checkpoint, labels


def test_each_object_keeps_its_clicks_and_propagates(two_objects, make_napari_viewer, qtbot):
    folder, checkpoint, labels = two_objects
    viewer = make_napari_viewer()
    widget = widget_on(viewer, checkpoint, folder)
    load(qtbot, widget)
    assert "Session resumed" in widget.status.value, widget.status.value
    assert widget.points.features["obj_id"].tolist() == [1, 2]
    assert set(widget.session.obj_ids) == {1, 2}
    np.testing.assert_array_equal(widget.labels_layer.data, labels)  # not recomputed wrongly
    assert widget.object_list.table.rowCount() == 2
    widget.direction.value = "forward"
    widget.propagate()
    wait(qtbot, widget)
    assert all({1, 2} <= set(np.unique(widget.labels_layer.data[t])) for t in range(1, 5))


def test_loading_twice_reuses_the_sam2_layers(two_objects, make_napari_viewer, qtbot):
    folder, checkpoint, labels = two_objects
    viewer = make_napari_viewer()
    widget = widget_on(viewer, checkpoint, folder)
    load(qtbot, widget)
    widget.points.add([[3, 10, 10]])  # a click after loading, forgotten by the second load
    wait(qtbot, widget)
    load(qtbot, widget)
    assert "Session resumed" in widget.status.value
    assert [layer.name for layer in viewer.layers] == [
        "cells", "SAM2 labels", "SAM2 clicks", "SAM2 boxes"
    ]  # fmt: skip
    assert len(widget.points.data) == 2 and set(widget.session.obj_ids) == {1, 2}
    np.testing.assert_array_equal(widget.labels_layer.data, labels)


def _damage_labels(folder):
    for chunk in (folder / "labels.zarr").rglob("*"):
        if chunk.is_file() and "c" in chunk.parts:
            chunk.write_bytes(b"\x28\xb5\x2f\xfd not zstd")


@pytest.mark.parametrize(
    "damage, words",
    [
        (_damage_labels, ("labels.zarr is damaged", "slice 1")),
        (lambda f: (f / "prompts.csv").unlink(), ("prompts.csv is missing",)),
        (lambda f: (f / "session.json").write_text("[]"), ("session.json", "list")),
    ],
)
def test_a_damaged_session_restores_nothing_and_says_so(
    two_objects, make_napari_viewer, qtbot, damage, words
):
    folder, checkpoint, _ = two_objects
    damage(folder)
    viewer = make_napari_viewer()
    widget = widget_on(viewer, checkpoint, folder)
    widget.start()
    wait(qtbot, widget)
    click(qtbot, widget, 3, 15, 20)  # work in progress, which a refused load must keep
    before = np.asarray(widget.labels_layer.data).copy()
    load(qtbot, widget)
    status = widget.status.value
    assert status.startswith("⚠") and all(w in status for w in words), status
    assert "ready" not in status.lower()
    assert len(viewer.layers) == 4 and len(widget.points.data) == 1
    assert widget.session is not None and widget.session.obj_ids == (1,)
    np.testing.assert_array_equal(widget.labels_layer.data, before)


def test_an_image_with_one_edited_slice_is_refused(two_objects, make_napari_viewer, qtbot):
    folder, checkpoint, _ = two_objects
    edited = stack()
    edited[4, 0, 0] += 1
    viewer = make_napari_viewer()
    widget = widget_on(viewer, checkpoint, folder, edited)
    load(qtbot, widget)
    assert "slice 4 of this image differs" in widget.status.value
    assert widget.session is None and len(viewer.layers) == 1


def test_the_saved_checkpoint_is_used_and_a_missing_one_named(
    two_objects, make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    folder, checkpoint, _ = two_objects
    monkeypatch.setenv("NAPARI_SAM2_CACHE", str(tmp_path / "empty-cache"))  # no download
    viewer = make_napari_viewer()
    widget = widget_on(viewer, "", folder)
    load(qtbot, widget)  # nothing chosen: the session's own file
    assert "Session resumed" in widget.status.value, widget.status.value
    assert widget.checkpoint.value.resolve() == checkpoint.resolve()
    viewer.close()

    checkpoint.unlink()
    viewer = make_napari_viewer()
    widget = widget_on(viewer, "", folder)
    load(qtbot, widget)
    status = widget.status.value
    assert str(checkpoint.resolve()) in status and "Start → checkpoint" in status, status
    assert widget.session is None and len(viewer.layers) == 1


def test_a_labels_only_session_lists_its_objects(
    make_napari_viewer, qtbot, random_tiny_checkpoint, tmp_path
):
    folder = tmp_path / "session"
    viewer = make_napari_viewer()
    widget = widget_on(viewer, random_tiny_checkpoint, folder)
    widget.start()
    wait(qtbot, widget)
    seg = np.zeros((5, 40, 56), np.uint16)
    seg[2, 8:20, 10:22] = 7
    seg[2, 24:36, 38:50] = 12
    viewer.add_labels(seg, name="cellpose")
    widget.objects.source.value = viewer.layers["cellpose"]
    widget.objects.objects_from_labels()
    wait(qtbot, widget)
    widget.save_session()
    wait(qtbot, widget)
    viewer.close()

    viewer = make_napari_viewer()
    widget = widget_on(viewer, random_tiny_checkpoint, folder)
    load(qtbot, widget)
    assert "Session resumed" in widget.status.value
    table = widget.object_list.table
    assert sorted(int(table.item(r, 0).text()) for r in range(table.rowCount())) == [7, 12]
    assert set(widget.session.obj_ids) == {7, 12} and widget.session.mask_prompted(2) == {7, 12}
