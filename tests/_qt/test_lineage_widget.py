"""Lineage in the widget: divisions found while propagating, the Tracks layer and its graph,
the object list's parents and daughters, corrections that survive propagating again and are
saved with the session, and the export of tracks. The real network with random weights at a
128-pixel input; every slice prompted by its mask, so that the results are these masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from qt_helpers import started, wait

from napari_sam2.io import session_folder

pytestmark = pytest.mark.display

T, H, W = 8, 48, 64


def disc(center, radius=6):
    rows, cols = np.mgrid[:H, :W]
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


def cell(t: int):
    """One cell that divides on slice 3 into two that move apart."""
    if t < 3:
        return disc((24, 32))
    d = 8 + 2 * (t - 3)
    return disc((24, 32 - d)) | disc((24, 32 + d))


@pytest.fixture
def divided(make_napari_viewer, qtbot, model):
    """A widget on a dividing cell, propagated forward with divisions."""
    masks = [cell(t) for t in range(T)]
    stack = (400 + 2000 * np.stack(masks)).astype(np.uint16)
    viewer, widget = started(make_napari_viewer, qtbot, model, stack)
    for t, m in enumerate(masks):  # painted before the split; mask prompts everywhere
        if t < 3:  # (the widget keeps painted labels as they are)
            widget.label_view()[t] = m.astype(np.uint16)
        widget.session.add_label_prompts(t, m.astype(np.uint16), [1])
    widget.lineage.divisions.value = True
    assert widget.direction.value == "forward"  # ticking divisions offered it
    widget.propagate()
    wait(qtbot, widget)
    yield viewer, widget
    wait(qtbot, widget)


def test_divisions_make_daughter_tracks_a_tracks_layer_with_its_graph_and_list_notes(divided):
    viewer, widget = divided
    table = widget.session.tracker.lineage
    parent, *daughters = table
    assert (parent.id, parent.last_frame) == (1, 2)
    kids = sorted(d.id for d in daughters)
    assert [d.parent for d in daughters] == [1, 1] and len(kids) == 2
    layer = viewer.layers["SAM2 tracks"]
    assert set(np.unique(layer.data[:, 0]).astype(int)) == {1, *kids}
    frames = sorted(layer.data[:, 1].astype(int).tolist())
    assert frames == sorted([0, 1, 2] + list(range(3, T)) * 2)  # one point per track and slice
    assert layer.graph == {k: [1] for k in kids}
    assert sorted(widget.lineage.points) == list(range(T))  # slice by slice
    rows = {widget.object_list._id_of(r): widget.object_list.table.item(r, 2).text()
            for r in range(widget.object_list.table.rowCount())}  # fmt: skip
    assert rows[1].endswith(f"→ {kids[0]}, {kids[1]}")
    assert rows[kids[0]].endswith("from 1")


def test_divisions_backward_are_refused_before_anything_runs(divided, qtbot):
    _, widget = divided
    before = np.array(widget.labels_layer.data, copy=True)
    widget.direction.value = "both"
    widget.propagate()
    wait(qtbot, widget)
    assert "forward in time" in widget.status.value
    np.testing.assert_array_equal(widget.labels_layer.data, before)


def test_a_cut_relabels_survives_propagating_again_and_is_saved_with_the_session(
    divided, qtbot, tmp_path
):
    _, widget = divided
    kid = max(t.id for t in widget.session.tracker.lineage)
    widget.lineage.track.value = kid
    widget.go_to_frame(5)
    widget.lineage.cut()
    new = max(t.id for t in widget.session.tracker.lineage)
    assert new not in (1, kid)
    labels = widget.label_view()
    assert kid in np.unique(labels[4]) and kid not in np.unique(labels[5])
    assert new in np.unique(labels[5]) and new in np.unique(labels[T - 1])
    assert widget.viewer.layers["SAM2 tracks"].data[:, 0].max() == new
    widget.propagate()  # again, from the start: the cut is kept
    wait(qtbot, widget)
    assert new in np.unique(widget.label_view()[T - 1]) and kid not in np.unique(labels[6])
    # bad corrections say what is wrong and change nothing
    widget.lineage.others.value = "1"
    widget.lineage.join()
    assert "share slices" in widget.status.value or "no track" in widget.status.value
    widget.lineage.others.value = "five"
    widget.lineage.mark_division()
    assert "'other track(s)'" in widget.status.value
    assert len(widget.lineage.edits) == 1
    # saved with the session and read back
    widget.session_folder.value = str(tmp_path / "s")
    widget.save_session()
    wait(qtbot, widget)
    info = json.loads((tmp_path / "s" / "session.json").read_text())
    assert info["lineage_edits"] == [{"kind": "cut", "track": kid, "frame": 5, "new_id": new}]
    saved = session_folder.read(tmp_path / "s")
    assert saved.lineage_edits == widget.lineage.edits
    widget.load_session()
    wait(qtbot, widget)
    assert widget.lineage.edits == saved.lineage_edits
    # an older session (no lineage_edits field) still loads
    del info["lineage_edits"]
    (tmp_path / "s" / "session.json").write_text(json.dumps(info))
    assert session_folder.read(tmp_path / "s").lineage_edits == []


def test_export_tracks_as_ctc_csv_and_geff(divided, qtbot, tmp_path):
    _, widget = divided
    lineage = widget.lineage
    for fmt, path in (("CTC folder", "ctc"), ("CSV", "t.csv"), ("GEFF", "t.geff")):
        lineage.export_format.value = fmt
        lineage.export_path.value = str(tmp_path / path)
        lineage.export()
        wait(qtbot, widget)
        assert "Tracks written" in widget.status.value, widget.status.value
    tracks = (tmp_path / "ctc" / "res_track.txt").read_text().split("\n")
    links = [line.split() for line in tracks if line.endswith(" 1")]
    assert len(links) == 2 and all(line[1] == "3" for line in links)  # daughters of 1 on 3
    assert "parent" in (tmp_path / "t.csv").read_text().splitlines()[0]
    assert (tmp_path / "t.geff").exists()
