"""CTC, GEFF and CSV exports, read back by their own reference readers: traccuracy's
``load_ctc_data`` (with its CTC format checks) and the geff package."""

from __future__ import annotations

import csv

import numpy as np
import pytest

import napari_sam2 as ns
from napari_sam2.io import InputError


def lineage_volume(depth: int | None = None):
    """Track 1 on frames 0-2 divides into 2 and 3 (frames 3-5); track 4 is missing on frames
    2-3 (a gap). With ``depth``: the same as 3-D masks (T, Z, Y, X)."""
    labels = np.zeros((6, 32, 48), np.uint16)
    for t in range(6):
        if t < 3:
            labels[t, 4:12, 20:28] = 1
        else:
            labels[t, 4:10, 8:14] = 2
            labels[t, 4:10, 34:40] = 3
        if t not in (2, 3):
            labels[t, 20:28, 20:28] = 4
    if depth:
        labels = np.repeat(labels[:, None], depth, axis=1)
        labels[:, 0] = 0  # a slice without cells: still 3-D masks
    return labels


@pytest.mark.parametrize("depth", [None, 3])
def test_ctc_output_passes_traccuracys_format_checks(tmp_path, depth):
    from traccuracy.loaders import load_ctc_data

    labels = lineage_volume(depth)
    rows = ns.write_ctc(labels, tmp_path / "ctc", parents={2: 1, 3: 1})
    assert (1, 0, 2, 0) in rows and (2, 3, 5, 1) in rows and (3, 3, 5, 1) in rows
    gap = [r for r in rows if r[3] == 4]  # the stretch after the gap: a new id, parent 4
    assert (4, 0, 1, 0) in rows and len(gap) == 1 and gap[0][1:3] == (4, 5)
    assert sorted((tmp_path / "ctc").glob("mask*.tif"))[0].name == "mask000.tif"
    graph = load_ctc_data(str(tmp_path / "ctc"), run_checks=True)
    assert graph.segmentation.shape == labels.shape
    g = graph.graph
    assert g.number_of_nodes() == 3 + 3 + 3 + 4  # a node per track and frame
    divisions = [n for n in g.nodes if g.out_degree(n) == 2]
    assert len(divisions) == 1 and g.nodes[divisions[0]]["t"] == 2


def test_ctc_refuses_an_existing_output_and_a_wrong_shape(tmp_path):
    ns.write_ctc(lineage_volume(), tmp_path / "ctc")
    with pytest.raises(InputError, match="already holds"):
        ns.write_ctc(lineage_volume(), tmp_path / "ctc")
    with pytest.raises(InputError, match=r"\(T, Y, X\)"):
        ns.write_ctc(np.zeros((4, 5), np.uint16), tmp_path / "other")


def test_geff_output_is_read_by_the_geff_package(tmp_path):
    import geff

    labels = lineage_volume()
    n = ns.write_geff(labels, tmp_path / "tracks.geff", parents={2: 1, 3: 1})
    graph, metadata = geff.read(str(tmp_path / "tracks.geff"))
    assert graph.number_of_nodes() == n == 3 + 3 + 3 + 4
    assert [a.name for a in metadata.axes] == ["t", "y", "x"]
    split = [v for v in graph.nodes if graph.out_degree(v) == 2]
    assert len(split) == 1 and graph.nodes[split[0]]["t"] == 2
    kids = {graph.nodes[c]["track_id"] for c in graph.successors(split[0])}
    assert kids == {2, 3}


def test_csv_measurements_per_track_and_frame(tmp_path):
    labels = lineage_volume()
    image = (labels * 100 + 7).astype(np.uint16)
    n = ns.write_tracks_csv(labels, tmp_path / "t.csv", image=image, parents={2: 1, 3: 1})
    with open(tmp_path / "t.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n == 3 + 3 + 3 + 4
    row = next(r for r in rows if r["frame"] == "4" and r["track_id"] == "3")
    assert row["parent"] == "1" and int(row["area"]) == 36
    assert float(row["mean_intensity"]) == 307.0
    assert (float(row["centroid_y"]), float(row["centroid_x"])) == (6.5, 36.5)
