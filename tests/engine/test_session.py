"""The Qt-free logic behind the widget: stacks seen as frames, and prompt tables kept in step
with the tracker. Real network, random weights, small input (no mocks)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam2.engine.session import BoxRow, PointRow, PromptSession
from napari_sam2.engine.stack import StackError, StackGeometry


@pytest.fixture(scope="module")
def mini_model():
    from official import random_tiny

    return random_tiny(128, seed=6, object_bias=5.0)


# ---------------------------------------------------------------- geometry
def test_geometry_of_a_time_lapse_of_volumes():
    g = StackGeometry((5, 3, 20, 30), stack_axis=0, fixed={1: 2})
    assert g.num_frames == 5 and g.spatial_shape == (20, 30) and g.labels_shape == (5, 3, 20, 30)
    data = np.arange(5 * 3 * 20 * 30).reshape(5, 3, 20, 30)
    frames = g.frames(data)
    assert frames.shape == (5, 20, 30)
    np.testing.assert_array_equal(frames[4], data[4, 2])
    assert g.frame_of((4.2, 2.0, 7.0, 9.0)) == (4, 7.0, 9.0)
    assert g.frame_of((4.0, 1.0, 7.0, 9.0)) is None  # another Z slice
    labels = np.zeros((5, 3, 20, 30), np.uint8)
    g.label_frames(labels)[3] = 7
    assert labels[3, 2].all() and labels.sum() == 7 * 600


def test_geometry_along_the_second_axis_and_rgb():
    g = StackGeometry((5, 3, 20, 30), stack_axis=1, fixed={0: 4})
    data = np.arange(5 * 3 * 20 * 30).reshape(5, 3, 20, 30)
    np.testing.assert_array_equal(g.frames(data)[2], data[4, 2])
    rgb = StackGeometry((6, 20, 30, 3), rgb=True, stack_axis=0)
    assert rgb.frames(np.zeros((6, 20, 30, 3))).shape == (6, 20, 30, 3)
    assert rgb.labels_shape == (6, 20, 30)
    single = StackGeometry((20, 30))
    assert single.num_frames == 1 and single.frame_of((3.0, 4.0)) == (0, 3.0, 4.0)
    assert single.frames(np.ones((20, 30))).shape == (1, 20, 30)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(shape=(5, 3, 20, 30), stack_axis=0), "need a fixed index"),
        (dict(shape=(5, 20, 30), stack_axis=2), "cannot be the stack axis"),
        (dict(shape=(5, 20, 30), stack_axis=0, fixed={}), None),
        (dict(shape=(5, 3, 20, 30), stack_axis=0, fixed={1: 3}), "out of range"),
        (dict(shape=(1, 30)), "no 2-D frames"),
    ],
)
def test_geometry_errors(kwargs, match):
    if match is None:
        StackGeometry(**kwargs)
        return
    with pytest.raises(StackError, match=match):
        StackGeometry(**kwargs)


# ---------------------------------------------------------------- session
def stack():
    rr, cc = np.mgrid[:40, :56]
    data = np.full((5, 40, 56), 20, np.uint8)
    for i in range(5):
        data[i][(rr - 15 - i) ** 2 + (cc - 20 - i) ** 2 < 8**2] = 220
    return data


def test_sync_prompts_the_changed_objects_only(mini_model):
    session = PromptSession(mini_model, stack())
    calls = []
    original = session.tracker.add_prompt
    session.tracker.add_prompt = lambda *a, **k: (calls.append(a[:2]), original(*a, **k))[1]
    p1 = PointRow(1, 2, 15, 20, True)
    out = session.sync_frame(2, [p1], [])
    assert out.result.obj_ids == (1,) and calls == [(2, 1)]
    box = BoxRow(2, 2, (25.0, 30.0, 38.0, 50.0))
    out = session.sync_frame(2, [p1], [box])
    assert out.result.obj_ids == (1, 2) and calls == [(2, 1), (2, 2)]  # object 1 unchanged
    again = session.sync_frame(2, [p1], [box])
    assert len(calls) == 2 and again.result is None  # nothing changed, nothing recomputed
    assert session.tracker.prompted_frames() == [2]


def test_removing_prompts_clears_and_removes_objects(mini_model):
    session = PromptSession(mini_model, stack())
    a, b = PointRow(1, 0, 15, 20, True), PointRow(1, 3, 18, 23, True)
    session.sync_frame(0, [a, b], [])
    session.sync_frame(3, [a, b], [])
    out = session.sync_frame(3, [a], [])  # b deleted: object 1 still prompted on frame 0
    assert out.removed == () and session.tracker.prompted_frames(1) == [0]
    out = session.sync_frame(0, [], [])  # a deleted too: the object is gone
    assert out.removed == (1,) and session.tracker.obj_ids == ()


def test_removing_a_click_gives_what_the_remaining_clicks_give(mini_model):
    session = PromptSession(mini_model, stack())
    a, b = PointRow(1, 1, 16, 21, True), PointRow(1, 1, 2, 2, False)
    first = session.sync_frame(1, [a], []).result.logits
    session.sync_frame(1, [a, b], [])
    again = session.sync_frame(1, [a], []).result.logits
    np.testing.assert_allclose(again, first, atol=1e-5)


def test_propagate_through_the_session_and_close_between_frames(mini_model):
    session = PromptSession(mini_model, stack())
    session.sync_frame(0, [PointRow(1, 0, 15, 20, True)], [])
    assert session.plan("forward") == 5
    run = session.propagate("forward")
    assert [next(run).frame for _ in range(2)] == [0, 1]
    run.close()
    assert [r.frame for r in session.propagate("forward")] == [2, 3, 4]


# ---------------------------------------------------------------- mask prompts
def _discs(t=4, h=40, w=56):
    rr, cc = np.mgrid[:h, :w]
    stack = np.full((t, h, w), 20, np.uint8)
    labels = np.zeros((h, w), np.uint16)
    for i, (r, c) in enumerate([(12, 14), (26, 40)]):
        stack[:, (rr - r) ** 2 + (cc - c) ** 2 < 36] = 200
        labels[(rr - r) ** 2 + (cc - c) ** 2 < 36] = 5 + i
    return stack, labels


def test_label_prompts_survive_click_syncs_and_clicks_refine_them(mini_model):
    stack, labels = _discs()
    session = PromptSession(mini_model, stack)
    first = session.add_label_prompts(1, labels)
    assert first.result.obj_ids == (5, 6) and session.mask_prompted(1) == {5, 6}
    mask_only = first.result.logits[0].copy()
    # a click for another object on the same frame leaves the masks alone
    session.sync_frame(1, [PointRow(9, 1, 30, 10, True)], [])
    assert session.obj_ids == (5, 6, 9)
    # a negative click on object 5 refines its mask; removing it gives the mask back
    refined = session.sync_frame(1, [PointRow(5, 1, 12, 14, False)], []).result
    assert not np.allclose(refined.logits[0], mask_only)
    back = session.sync_frame(1, [], []).result
    np.testing.assert_allclose(back.logits[0], mask_only, atol=1e-5)
    assert session.obj_ids == (5, 6)  # object 9 had only its click: removed
    assert set(session.tracker.prompted_frames()) == {1}


def test_an_erased_object_becomes_absent_on_that_frame(mini_model):
    stack, labels = _discs()
    session = PromptSession(mini_model, stack)
    session.add_label_prompts(0, labels)
    erased = np.where(labels == 6, 0, labels)
    res = session.add_label_prompts(0, erased, obj_ids=[6])
    assert res.result.obj_ids == (5, 6)
    assert (res.result.logits[1] < 0).all()  # absent on frame 0
    assert session.mask_prompted(0) == {5, 6}
    tracked = list(session.propagate())
    assert [r.frame for r in tracked] == [0, 1, 2, 3]


def test_taking_back_mask_prompts_leaves_clicks_and_removes_mask_only_objects(mini_model):
    stack, labels = _discs()
    session = PromptSession(mini_model, stack)
    clicked = session.sync_frame(1, [PointRow(5, 1, 12, 14, True)], []).result
    session.add_label_prompts(1, labels)  # painted over: objects 5 (clicked too) and 6
    assert session.mask_prompted(1) == {5, 6} and session.obj_ids == (5, 6)
    back = session.remove_mask_prompts(1, [5, 6])
    assert back.removed == (6,) and session.obj_ids == (5,)
    assert session.mask_prompted(1) == set()
    np.testing.assert_allclose(back.result.logits[0], clicked.logits[0], atol=1e-4)


def test_embed_ahead_is_the_trackers_own_embedding_computed_outside_the_lock(mini_model):
    import torch

    frames = np.random.default_rng(0).integers(0, 4000, (4, 40, 56)).astype(np.uint16)
    session = PromptSession(mini_model, frames)
    assert session.embed_ahead(2) and not session.embed_ahead(2)  # known now: not again
    done = session.tracker._embeddings.computed
    ahead = session.tracker._embedding(2)
    assert session.tracker._embeddings.computed == done  # a click there encodes nothing
    with torch.inference_mode():  # as the tracker computes its own
        reference = PromptSession(mini_model, frames).tracker._embedding(2)
    for a, b in ((ahead.features, reference.features), (ahead.high_res[0], reference.high_res[0])):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not session.embed_ahead(3, wanted=lambda: False)  # the user moved on
    assert not session.tracker._embeddings.known(3)
    session.embed(3, wanted=lambda: False)
    assert not session.tracker._embeddings.known(3)
    session.close()
    assert not session.embed_ahead(1)
