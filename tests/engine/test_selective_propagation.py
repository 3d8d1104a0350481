"""Propagating only chosen objects, changing an object's id in place, and the ledger of what
a propagation would repeat: the real network with random weights at a 128-pixel input."""

from __future__ import annotations

import numpy as np
import pytest

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
