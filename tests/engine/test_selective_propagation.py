"""Propagating only chosen objects, changing an object's id in place, the ledger of what
a propagation would repeat, and the records a re-propagation keeps: the real network with random
weights at a 128-pixel input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam2 import VideoTracker
from napari_sam2.engine.memory_bank import FrameRecord, SpillingStore
from napari_sam2.engine.reruns import PropagationLedger
from napari_sam2.engine.session import PointRow, PromptSession


@pytest.fixture(scope="module")
def model():
    from official import random_tiny

    return random_tiny(128, seed=4, object_bias=5.0)


def session(model):
    data = np.random.default_rng(0).integers(0, 255, (5, 40, 56), dtype=np.uint8)
    s = PromptSession(model, data)
    s.sync_frame(0, [PointRow(1, 0, 14, 16, True), PointRow(2, 0, 28, 42, True)], [])
    return s


def test_chosen_objects_alone_give_what_they_give_with_all(model):
    everyone, alone = session(model), session(model)
    full = {r.frame: r.low_res[1].clone() for r in everyone.propagate("forward")}
    only = list(alone.propagate("forward", obj_ids=[2]))
    assert [r.obj_ids for r in only] == [(1, 2)] * 5
    for r in only:
        np.testing.assert_allclose(r.low_res[1], full[r.frame], atol=1e-4)
    assert alone.tracker.result(3, [1]).low_res.max() < -100  # object 1 never tracked
    with pytest.raises(KeyError, match="unknown object id 9"):
        alone.tracker.plan("forward", obj_ids=[9])
    with pytest.raises(ValueError, match="obj_ids is empty"):
        alone.tracker.plan("forward", obj_ids=[])


def test_a_new_id_keeps_results_and_the_ledger_sees_only_changed_prompts(model):
    s = session(model)
    list(s.propagate("forward"))
    ledger = PropagationLedger()
    call = ("forward", None, None)
    ledger.finished(s.tracker, call, (0, 4), [1, 2])
    assert ledger.changed(s.tracker, call, [1, 2]) == []
    assert ledger.changed(s.tracker, ("both", None, None), [1]) == [1]
    before = s.tracker.result(4, [2]).low_res.clone()
    s.rename_object(2, 7)
    ledger.rename(2, 7)
    assert s.obj_ids == (1, 7)
    np.testing.assert_array_equal(s.tracker.result(4, [7]).low_res, before)
    with pytest.raises(ValueError, match="in use"):
        s.rename_object(7, 1)
    s.sync_frame(2, [PointRow(7, 2, 28, 40, True)], [])
    assert ledger.changed(s.tracker, call, [1, 7]) == [7]
    assert s.tracker.plan("forward", obj_ids=[7]) == [(2, 4, False)]


def tracked(model, clicks):
    data = np.random.default_rng(1).integers(0, 255, (8, 40, 56), dtype=np.uint8)
    tracker = VideoTracker(model, data)
    for obj_id, (row, col) in clicks.items():
        tracker.add_prompt(0, obj_id, points=[(row, col)], labels=[1])
    list(tracker.propagate())
    return tracker


def records(tracker, obj_id, frames):
    return {f: tracker._objects[obj_id].output(f) for f in frames}


def test_a_repropagation_keeps_the_objects_whose_memories_did_not_change(model):
    """Objects are tracked independently: after a correction of object 1, a re-propagation
    computes object 1 again and keeps the others' records (they attend to the same records as
    before); a model whose parameters changed computes everything again, and gives the same."""
    clicks = {1: (14, 16), 2: (28, 42), 3: (10, 40)}
    kept, again = tracked(model, clicks), tracked(model, clicks)
    before = {i: records(kept, i, range(4, 8)) for i in clicks}
    for t in (kept, again):
        t.add_prompt(4, 1, points=[(30, 10)], labels=[0])
    results = {kept: list(kept.propagate(start=4))}
    with torch.no_grad():  # the same values, a new version: nothing may be taken as computed
        next(model.parameters()).add_(0)
    results[again] = list(again.propagate(start=4))
    for i in (2, 3):
        after = records(kept, i, range(4, 8))
        assert all(after[f] is before[i][f] for f in range(4, 8))  # not computed again
        assert all(again._objects[i].output(f) is not before[i][f] for f in range(4, 8))
    assert all(kept._objects[1].output(f) is not before[1][f] for f in range(5, 8))
    for a, b in zip(results[kept], results[again]):
        np.testing.assert_allclose(a.low_res, b.low_res, atol=1e-5)
    assert not np.allclose(results[kept][-1].low_res[0], before[1][7].low_res[0], atol=1e-3)
    # backward over the frames the forward pass tracked: other memories, computed again
    # each frame re-propagated is read once, for the kept objects' check and the store's alike
    kept.add_prompt(5, 1, points=[(20, 12)], labels=[0])
    reads = []
    read = kept.source.read
    kept.source.read = lambda t: reads.append(t) or read(t)
    list(kept.propagate(start=5))
    assert sorted(reads) == [5, 6, 7]
    kept.source.read = read
    kept_record = records(kept, 2, [3])[3]
    list(kept.propagate("backward", start=7))
    assert kept._objects[2].output(3) is not kept_record


def test_a_spilled_record_keeps_what_it_was_computed_from(tmp_path):
    store = SpillingStore(capacity=1, spill_dir=tmp_path)
    low, ptr, score = torch.zeros(1, 1, 4, 4), torch.zeros(1, 8), torch.zeros(1, 1)
    first = FrameRecord(low, ptr, score, None, inputs=(("fp32", 5), ((6, 11),), ((1, 12),)))
    store.put(0, first)
    store.put(1, FrameRecord(low, ptr, score))
    assert store.on_disk == 1
    back = store.get(0)
    assert back is not first and (back.serial, back.inputs) == (first.serial, first.inputs)
    assert FrameRecord(low, ptr, score).serial != first.serial
    assert first.with_memory(torch.zeros(1, 2, 2, 2)).serial != first.serial


def test_a_frame_edited_since_is_computed_again(model):
    data = np.random.default_rng(1).integers(0, 255, (6, 40, 56), dtype=np.uint8)
    tracker = VideoTracker(model, data)
    for obj_id, click in ((1, (14, 16)), (2, (28, 42))):
        tracker.add_prompt(0, obj_id, points=[click], labels=[1])
    list(tracker.propagate())
    before = records(tracker, 2, range(3, 6))
    data[4] = 255 - data[4]  # the image changed in place (a napari layer edited)
    tracker.add_prompt(3, 1, points=[(30, 10)], labels=[0])
    with pytest.warns(UserWarning):  # the store says the frame changed
        list(tracker.propagate(start=3))
    after = records(tracker, 2, range(3, 6))
    assert after[3] is before[3]  # unchanged frame, unchanged memories: kept
    assert after[4] is not before[4] and after[5] is not before[5]
