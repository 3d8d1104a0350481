"""The lineage rules on the synthetic lineage time-lapse, fed the masks a perfect tracker would
give (each cell one object, a dividing cell's mask covering both daughters): the table they
derive is the ground truth's, divisions and entries on the right frames."""

import numpy as np

from napari_sam2._sample_lineage import synthetic_lineage
from napari_sam2.engine.lineage import Lineage, LineageOptions


def _root(parents: dict, i: int) -> int:
    while i in parents:
        i = parents[i]
    return i


def _shape(rows, parents):
    """(first, last, parent's (first, last)) per track: the table without its ids."""
    span = {i: (b, e) for i, b, e in rows}
    return sorted((b, e, span.get(parents.get(i))) for i, b, e in rows)


def test_a_perfect_tracker_gives_the_ground_truth_lineage():
    gt = synthetic_lineage(n_frames=16, n_cells=3, n_divisions=2, n_entering=2, seed=3)
    parents = gt.parents
    objects = sorted({_root(parents, int(i)) for i in gt.tracks[:, 0]})
    lineage = Lineage(LineageOptions(min_area=20, persist=3))
    for t, frame in enumerate(gt.labels):
        roots = np.zeros(int(frame.max()) + 1, np.int64)
        for i in range(len(roots)):
            roots[i] = _root(parents, i)
        frame = roots[frame]
        present = [i for i in objects if (frame == i).any()]
        lineage.record(t, present, np.stack([frame == i for i in present]))
    lineage.finish()
    got = [(t.id, t.first_frame, t.last_frame) for t in lineage.table()]
    want = [(int(i), int(b), int(e)) for i, b, e, _ in gt.tracks]
    assert _shape(got, lineage.parents()) == _shape(want, parents)
    assert len(lineage.parents()) == 4 and not lineage.merges
