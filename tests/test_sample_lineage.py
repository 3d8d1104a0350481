"""The synthetic lineage time-lapse (dividing and entering cells) and its ground truth agree:
written with our CTC writer, traccuracy's loader accepts them with its format checks, and the
graph it builds has the divisions and entries the scene was drawn with."""

import numpy as np
import pytest
from skimage.measure import label as connected

import napari_sam2 as ns
from napari_sam2._sample_lineage import make_sample_lineage, synthetic_lineage


@pytest.fixture(scope="module")
def sample():
    return synthetic_lineage(n_frames=16, n_cells=3, n_divisions=2, n_entering=2, seed=3)


def test_ground_truth_passes_traccuracys_ctc_checks(sample, tmp_path):
    from traccuracy.loaders import load_ctc_data

    rows = ns.write_ctc(sample.labels, tmp_path / "gt", sample.parents)
    # our writer neither cut nor renamed a track: the table is the CTC table as drawn
    assert sorted(map(tuple, rows)) == sorted(map(tuple, sample.tracks.tolist()))
    graph = load_ctc_data(str(tmp_path / "gt"), run_checks=True)
    out_degree = dict(graph.graph.out_degree())
    assert sum(1 for d in out_degree.values() if d == 2) == 2  # two divisions
    lengths = sample.tracks[:, 2] - sample.tracks[:, 1] + 1
    assert graph.graph.number_of_nodes() == int(lengths.sum())


def test_the_scene_has_what_it_promises(sample):
    tracks = {int(i): (int(b), int(e), int(p)) for i, b, e, p in sample.tracks}
    assert sample.frames.shape == sample.labels.shape == (16, 192, 256)
    assert sample.frames.dtype == np.uint16 and sample.labels.dtype == np.uint16
    daughters = {i: v for i, v in tracks.items() if v[2]}
    assert len(daughters) == 4
    for _, (first, _, parent) in daughters.items():
        assert first == tracks[parent][1] + 1  # starts right after its mother's last frame
        assert tracks[parent][1] < 15  # a mother ends before the movie does
    entering = [i for i, (b, _, p) in tracks.items() if b > 0 and not p]
    assert len(entering) == 2
    for i in entering:
        first = sample.labels[tracks[i][0]] == i
        edges = (first[0], first[-1], first[:, 0], first[:, -1])
        assert first.any() and any(edge.any() for edge in edges)  # it comes in through an edge
    for t in range(16):
        present = set(np.unique(sample.labels[t])) - {0}
        assert present == {i for i, (b, e, _) in tracks.items() if b <= t <= e}
        for i in present:  # every cell one connected region
            assert connected(sample.labels[t] == i).max() == 1
    again = synthetic_lineage(n_frames=16, n_cells=3, n_divisions=2, n_entering=2, seed=3)
    assert np.array_equal(again.frames, sample.frames)
    assert np.array_equal(again.labels, sample.labels)


def test_a_mother_elongates_before_it_divides(sample):
    """Its mask grows longer along one axis over its last frames (a dumbbell), and on the next
    frame its two daughters are separate regions."""
    from skimage.measure import regionprops

    mother, _, last, _ = next(r for r in sample.tracks.tolist() if r[1] == 0 and r[2] < 15)
    lengths = [
        regionprops((sample.labels[t] == mother).astype(np.uint8))[0].axis_major_length
        for t in range(last - 4, last + 1)
    ]
    assert lengths[-1] > 1.3 * lengths[0]
    kids = [r[0] for r in sample.tracks.tolist() if r[3] == mother]
    assert all((sample.labels[last + 1] == k).any() for k in kids)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_frames": 5}, "n_frames must be at least 12"),
        ({"n_cells": 1, "n_divisions": 2}, "n_divisions must be between 0 and n_cells=1"),
        ({"n_cells": 60, "shape": (64, 64)}, "use fewer cells or a larger shape"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic_lineage(**kwargs)


def test_napari_sample_gives_image_and_ground_truth():
    (image, image_kw, image_type), (labels, labels_kw, labels_type) = make_sample_lineage()
    assert (image_type, labels_type) == ("image", "labels")
    assert image.shape == labels.shape == (30, 192, 256)
    assert image_kw["name"] == "SAM2 sample: lineage"
    assert labels.max() >= 8
