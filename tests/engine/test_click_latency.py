"""A click with the embedding ready costs the decoder, not the work around it: a correction
on a tracked frame runs memory attention once, not on every click there, and the labels of a
result are resolved without per-pixel work on objects that cannot win a pixel. Every shortcut
gives exactly (bit for bit) what the full computation gives."""

from __future__ import annotations

import numpy as np
import torch

import napari_sam2 as ns
from napari_sam2.engine.conditioning import ConditionedCache
from napari_sam2.engine.labels import resolve_frame, resolve_overlaps, result_labels
from napari_sam2.engine.results import FrameResult


def moving_disc(t=8, h=40, w=56):
    rr, cc = np.mgrid[:h, :w]
    stack = np.zeros((t, h, w), dtype=np.uint8)
    for i in range(t):
        stack[i][(rr - 15 - i) ** 2 + (cc - 20 - i) ** 2 < 8**2] = 200
    return stack + np.random.default_rng(0).integers(0, 30, stack.shape).astype(np.uint8)


def propagated(model, cache=True):
    tracker = ns.VideoTracker(model, moving_disc())
    if not cache:  # every click conditions its object again: the full computation
        tracker._conditioned = ConditionedCache(size=0)
    tracker.add_prompt(0, 1, points=[(15, 20)], labels=[1])
    tracker.add_prompt(0, 2, points=[(30, 45)], labels=[1])
    list(tracker.propagate())
    return tracker


def clicks(tracker, calls):
    """Clicks on frame 5 (tracked), a prompt on frame 3 propagated, a click on 5 again: the
    results of the clicks on 5, and how many conditionings each click ran."""
    out, runs = [], []
    for frame, point, label, replace in [
        (5, (20, 25), 1, True),
        (5, (21, 26), 1, True),
        (5, (25, 30), 0, False),
        (3, (18, 23), 1, False),
        (5, (21, 26), 1, True),
    ]:
        n = len(calls)
        result = tracker.add_prompt(frame, 1, points=[point], labels=[label], replace=replace)
        runs.append(len(calls) - n)
        if frame == 3:
            list(tracker.propagate())
        else:
            out.append(result.logits)
    return out, runs


def test_clicks_on_a_tracked_frame_run_its_memory_attention_once(mini_model):
    calls = []
    # the final norm of memory attention runs once per conditioning
    hook = mini_model.memory_attention.norm.register_forward_hook(lambda *a: calls.append(1))
    try:
        tracker = propagated(mini_model)
        got, runs = clicks(tracker, calls)
        full = propagated(mini_model, cache=False)
        expected, full_runs = clicks(full, calls)
    finally:
        hook.remove()
    assert full_runs == [1, 1, 1, 1, 1]  # without the cache: every click on a tracked frame
    # the first click on frame 5 conditions object 1 on its memory, the next two reuse it;
    # after the memory changed (frame 3 prompted, propagated again) it is conditioned again
    assert runs == [1, 0, 0, 1, 1], runs
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)  # bit for bit
    tracker.close()
    full.close()


def low_res_logits(n_absent: int, rng) -> torch.Tensor:
    """(N, 1, 32, 32): two overlapping objects, one present nowhere but not absent (logits
    just below 0), then ``n_absent`` objects judged absent (-1024)."""
    rr, cc = np.mgrid[:32, :32]
    a = 6.0 - np.hypot(rr - 12, cc - 12)
    b = 5.0 - np.hypot(rr - 15, cc - 17)
    faint = -0.01 - rng.random((32, 32))
    low = np.stack([a, b, faint] + [np.full((32, 32), -1024.0)] * n_absent)
    return torch.from_numpy(low[:, None].astype(np.float32))


def test_labels_resolve_only_the_objects_that_can_win_a_pixel(monkeypatch):
    upscale, upscaled = FrameResult._upscale, []

    def counted(self, low_res):  # how many objects are made full-size
        upscaled.append(len(low_res))
        return upscale(self, low_res)

    monkeypatch.setattr(FrameResult, "_upscale", counted)
    rng = np.random.default_rng(0)
    low = low_res_logits(40, rng)
    ids = tuple(range(1, len(low) + 1))
    for keep in ([0, 1, 2, *range(3, 43)], [1, 2, 3], [2, 3], [0], []):
        index = torch.tensor(keep, dtype=torch.long)
        sub = tuple(ids[i] for i in keep)
        upscaled.clear()
        result = FrameResult(4, sub, low_res=low[index], shape=(90, 140))
        labels = result_labels(result, np.uint16)
        live = sum(1 for i in keep if i < 2)  # the two objects above 0 somewhere
        assert sum(upscaled) == live, keep  # nothing full-size for the others
        full = FrameResult(4, sub, low_res=low[index], shape=(90, 140)).logits
        expected = np.zeros((90, 140), np.uint16)
        if sub:
            winner, foreground = resolve_overlaps(full)  # every object, at full size
            expected = np.where(foreground, np.asarray(sub, np.uint16)[winner], 0)
        np.testing.assert_array_equal(labels, expected)
        # results made of full-size logits, and resolve_frame's winning logits, agree too
        made = FrameResult(4, sub, full)
        np.testing.assert_array_equal(result_labels(made, np.uint16), expected)
        got, best = resolve_frame(made, np.uint16)
        np.testing.assert_array_equal(got, expected)
        top = full.max(axis=0, initial=-np.inf) if len(sub) else np.zeros((90, 140))
        np.testing.assert_array_equal(best, np.where(top > 0, top, 0).astype(np.float32))


def test_what_a_front_end_reads_of_a_session_never_waits_for_its_lock(mini_model):
    import time

    from lock_holding import lock_held

    from napari_sam2.engine.session import PointRow, PromptSession

    session = PromptSession(mini_model, moving_disc())
    session.sync_frame(0, [PointRow(1, 0, 15, 20, True)], [])
    labels = np.zeros((40, 56), np.uint16)
    labels[25:35, 40:50] = 2
    session.add_label_prompts(2, labels, [2])
    with lock_held(session.lock):  # as a propagation holds it per frame
        t0 = time.perf_counter()
        seen = session.obj_ids, session.mask_prompted(2), session.prompted_frames(1)
        took = time.perf_counter() - t0
    assert took < 0.5, f"reading the session waited {took:.2f} s for its lock"
    assert seen == ((1, 2), {2}, (0,))  # the state as the lock last left it
    session.remove_object(2)
    assert session.obj_ids == (1,) and session.mask_prompted(2) == set()
    session.close()
