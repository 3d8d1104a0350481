"""VideoTracker behaviour beyond parity: lazy frame sources, bounded memory, batching, cancel
and resume, errors that leave the state unchanged, label writing. The real network with random
weights at a small input size (no mocks)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr

import napari_sam2 as ns


def moving_disc(t=20, h=40, w=56, dtype=np.uint8):
    rr, cc = np.mgrid[:h, :w]
    stack = np.zeros((t, h, w), dtype=dtype)
    for i in range(t):
        stack[i][(rr - 15 - i % 10) ** 2 + (cc - 20 - i % 15) ** 2 < 8**2] = 200
    return stack + np.random.default_rng(0).integers(0, 30, stack.shape).astype(dtype)


class CountingStack:
    """A lazy stack that records every frame index read (like a zarr or memmap on disk)."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.reads = data, data.shape, data.dtype, []

    def __len__(self):
        return len(self.data)

    def __getitem__(self, t):
        self.reads.append(t)
        return self.data[t]


def test_long_lazy_stack_reads_each_frame_once_and_memory_stays_bounded(mini_model, tmp_path):
    n = 100  # past the 16 results per object kept in RAM and the 7-frame memory window
    disk = np.memmap(tmp_path / "stack.u16", dtype=np.uint16, mode="w+", shape=(n, 40, 56))
    disk[:] = moving_disc(n, dtype=np.uint16) * 10
    stack = CountingStack(disk)
    tracker = ns.VideoTracker(mini_model, stack, window=ns.IntensityWindow(0, 2500))
    tracker.add_prompt(0, 1, points=[(15, 20)], labels=[1])
    tracker.add_prompt(0, 2, box=(0, 0, 10, 10))
    held_at = {}
    for r in tracker.propagate():
        if r.frame in (40, n - 1):
            held_at[r.frame] = tracker.memory_stats()
    assert sorted(stack.reads) == list(range(n))  # every frame read exactly once
    early, late = held_at[40], held_at[n - 1]
    # what stays in RAM does not grow with the stack; older frames are on disk
    assert late["tracked_in_ram"] == early["tracked_in_ram"] <= 2 * 17
    assert late["conditioning"] == early["conditioning"] == 2
    assert late["cached_embeddings"] <= 2
    assert late["tracked_on_disk"] == 2 * (n - 1) - late["tracked_in_ram"]
    tracker.close()


def test_a_batch_of_objects_is_one_decoder_call_per_frame(mini_model):
    tracker = ns.VideoTracker(mini_model, moving_disc(8), object_batch=3)
    for obj_id in (1, 2, 3):
        tracker.add_prompt(0, obj_id, points=[(10 * obj_id, 20)], labels=[1])
    batches, encodings = [], []
    hooks = [
        mini_model.sam_mask_decoder.register_forward_hook(
            lambda m, args, out: batches.append(out.masks.shape[0])
        ),
        mini_model.image_encoder.register_forward_hook(lambda *a: encodings.append(1)),
    ]
    try:
        results = list(tracker.propagate())
    finally:
        for h in hooks:
            h.remove()
    assert [r.obj_ids for r in results] == [(1, 2, 3)] * 8
    assert batches == [3] * 7  # frames 1..7, every object in one decoder call
    assert len(encodings) <= 8  # each frame embedded once (frame 0 may be cached already)


def test_dask_and_zarr_sources(mini_model, tmp_path):
    data = moving_disc(6)
    z = zarr.open_array(
        tmp_path / "s.zarr", mode="w", shape=data.shape, dtype=data.dtype, chunks=(1, 40, 56)
    )
    z[:] = data
    expected = None
    for source in (data, da.from_array(data, chunks=(1, 40, 56)), z):
        tracker = ns.VideoTracker(mini_model, source)
        tracker.add_prompt(0, 1, points=[(15, 20)], labels=[1])
        logits = np.stack([r.logits for r in tracker.propagate()])
        expected = logits if expected is None else expected
        np.testing.assert_array_equal(logits, expected)


def test_cancel_keeps_results_and_a_later_call_continues(mini_model):
    frames = moving_disc(12)
    full = ns.VideoTracker(mini_model, frames)
    full.add_prompt(0, 1, points=[(15, 20)], labels=[1])
    reference = {r.frame: r.logits for r in full.propagate()}

    tracker = ns.VideoTracker(mini_model, frames)
    tracker.add_prompt(0, 1, points=[(15, 20)], labels=[1])
    run = tracker.propagate()
    first = [next(run) for _ in range(4)]
    run.close()  # cancel between frames
    assert [r.frame for r in first] == [0, 1, 2, 3]
    # what was yielded stays valid: the tracker reports the same result for those frames
    np.testing.assert_array_equal(tracker.result(3).logits, reference[3])
    rest = list(tracker.propagate())
    assert [r.frame for r in rest] == list(range(4, 12))
    for r in rest:
        np.testing.assert_allclose(r.logits, reference[r.frame], atol=1e-5)


def test_forget_interrupted_makes_the_same_call_start_again_from_its_start(mini_model):
    tracker = ns.VideoTracker(mini_model, moving_disc(8))
    tracker.add_prompt(0, 1, points=[(15, 20)], labels=[1])
    run = tracker.propagate(start=0, stop=7)
    [next(run) for _ in range(3)]
    run.close()
    assert tracker.plan(start=0, stop=7) == [(3, 7, False)]  # continues where it stopped
    tracker.forget_interrupted()
    assert tracker.plan(start=0, stop=7) == [(0, 7, False)]
    assert [r.frame for r in tracker.propagate(start=0, stop=7)] == list(range(8))


def test_correction_repropagates_from_the_corrected_frame(mini_model):
    tracker = ns.VideoTracker(mini_model, moving_disc(10))
    tracker.add_prompt(0, 1, points=[(15, 20)], labels=[1])
    before = {r.frame: r.logits for r in tracker.propagate()}
    fixed = tracker.add_prompt(5, 1, points=[(5, 5)], labels=[0])
    assert not np.allclose(fixed.logits, before[5])
    again = list(tracker.propagate())
    assert [r.frame for r in again] == list(range(5, 10))
    np.testing.assert_array_equal(again[0].logits, fixed.logits)
    assert not np.allclose(again[-1].logits, before[9])
    assert tracker.prompted_frames(1) == [0, 5]


def test_both_with_range(mini_model):
    tracker = ns.VideoTracker(mini_model, moving_disc(12))
    tracker.add_prompt(6, 1, points=[(15, 20)], labels=[1])
    plan = tracker.plan("both", start=2, stop=9)
    assert plan == [(6, 9, False), (6, 2, True)]
    frames = [r.frame for r in tracker.propagate("both", start=2, stop=9)]
    assert frames == [6, 7, 8, 9, 6, 5, 4, 3, 2]


def test_single_frame_stack_and_16bit_non_square(mini_model):
    one = (np.random.default_rng(0).normal(1000, 200, (1, 30, 70))).astype(np.uint16)
    tracker = ns.VideoTracker(mini_model, one)
    r = tracker.add_prompt(0, 3, points=[(15, 35)], labels=[1])
    assert r.logits.shape == (1, 30, 70) and r.obj_ids == (3,)
    assert [x.frame for x in tracker.propagate("both")] == [0, 0]


def test_remove_object_and_reset(mini_model):
    tracker = ns.VideoTracker(mini_model, moving_disc(5))
    tracker.add_prompt(0, 1, points=[(15, 20)], labels=[1])
    tracker.add_prompt(0, 2, points=[(30, 40)], labels=[1])
    list(tracker.propagate())
    tracker.remove_object(1)
    assert tracker.obj_ids == (2,)
    assert all(r.obj_ids == (2,) for r in tracker.propagate(start=0))
    with pytest.raises(KeyError, match=r"unknown object id 7.*\[2\]"):
        tracker.remove_object(7)
    tracker.reset()
    assert tracker.obj_ids == () and tracker.memory_stats()["tracked_in_ram"] == 0
    with pytest.raises(ns.PromptError, match="add a prompt"):
        tracker.propagate()


def test_clear_prompts_turns_a_prompted_frame_back_into_a_tracked_one(mini_model):
    tracker = ns.VideoTracker(mini_model, moving_disc(6))
    tracker.add_prompt(0, 1, points=[(15, 20)], labels=[1])
    tracker.add_prompt(3, 1, points=[(2, 2)], labels=[0])
    list(tracker.propagate())
    tracker.clear_prompts(3, 1)
    assert tracker.prompted_frames(1) == [0]
    assert [r.frame for r in tracker.propagate(start=0)] == list(range(6))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda t: t.add_prompt(0, 1, points=[(50, 10)], labels=[1]), ns.PromptError, "outside"),
        (
            lambda t: t.add_prompt(10, 1, points=[(5, 5)], labels=[1]),
            ns.FrameSourceError,
            r"frame 10 is out of range.*10 frames",
        ),
        (lambda t: t.add_prompt(-1, 1, points=[(5, 5)], labels=[1]), ns.FrameSourceError, "range"),
        (
            lambda t: t.add_prompt(1.5, 1, points=[(5, 5)], labels=[1]),
            ns.FrameSourceError,
            "integer",
        ),
        (
            lambda t: t.add_prompt(0, 0, points=[(5, 5)], labels=[1]),
            ns.PromptError,
            "positive integers",
        ),
        (lambda t: t.add_prompt(0, 4, mask=np.zeros((40, 56), bool)), ns.PromptError, "empty"),
        (lambda t: t.add_prompt(0, 4, mask=np.ones((10, 10), bool)), ns.PromptError, "shape"),
        (lambda t: t.add_prompt(0, 4), ns.PromptError, "give points"),
        (lambda t: t.remove_object(9), KeyError, "unknown object id 9"),
        (lambda t: t.propagate("sideways"), ValueError, "direction"),
        (lambda t: t.propagate("forward", start=5, stop=2), ValueError, "cannot go"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(mini_model, call, error, match):
    tracker = ns.VideoTracker(mini_model, moving_disc(10))
    tracker.add_prompt(0, 1, points=[(15, 20)], labels=[1])
    before = (tracker.obj_ids, tracker.prompted_frames(), tracker.memory_stats())
    with pytest.raises(error, match=match):
        call(tracker)
    assert (tracker.obj_ids, tracker.prompted_frames(), tracker.memory_stats()) == before


def test_inconsistent_frame_shapes_are_named(mini_model):
    frames = [np.zeros((20, 30), np.uint8)] * 3 + [np.zeros((20, 31), np.uint8)]
    tracker = ns.VideoTracker(mini_model, frames)
    tracker.add_prompt(0, 1, points=[(5, 5)], labels=[1])
    with pytest.raises(ns.FrameSourceError, match=r"frame 3 has shape \(20, 31\).*\(20, 30\)"):
        list(tracker.propagate())


@pytest.mark.parametrize(
    "frames, match",
    [
        (np.zeros((20, 30), np.uint8), r"\(T, H, W\)"),
        (np.zeros((0, 20, 30), np.uint8), "no frames"),
        ([], "non-empty"),
    ],
)
def test_bad_stacks(mini_model, frames, match):
    with pytest.raises(ns.FrameSourceError, match=match):
        ns.VideoTracker(mini_model, frames)


# ---------------------------------------------------------------- labels
def test_label_sink_resolves_overlaps_and_leaves_other_labels_alone():
    labels = np.zeros((2, 4, 4), np.uint16)
    labels[0, 0, 0] = 9  # a label drawn by hand, not tracked
    labels[0, 3, 3] = 1  # an old result of object 1
    sink = ns.LabelSink(labels)
    logits = np.full((2, 4, 4), -5.0, np.float32)
    logits[0, :2, :] = 3.0  # object 1: top half
    logits[1, 1:3, :] = 4.0  # object 2: middle, wins the overlap on row 1
    sink.write(ns.FrameResult(0, (1, 2), logits))
    assert labels[0, 0, 0] == 9  # foreign label untouched although object 1 covers it
    assert (labels[0, 0, 1:] == 1).all()
    assert (labels[0, 1] == 2).all() and (labels[0, 2] == 2).all()  # highest logit wins
    assert labels[0, 3, 3] == 0  # object 1's old voxel replaced
    assert (labels[1] == 0).all()


def test_track_to_labels_into_zarr_with_progress(mini_model, tmp_path):
    frames = moving_disc(6)
    tracker = ns.VideoTracker(mini_model, frames)
    tracker.add_prompt(0, 5, points=[(15, 20)], labels=[1])
    out = zarr.open_array(
        tmp_path / "labels.zarr", mode="w", shape=frames.shape, dtype=np.uint32, chunks=(1, 40, 56)
    )
    out[2, 0, 0] = 77
    seen = []
    ns.track_to_labels(tracker, out, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 6) for i in range(1, 7)]
    result = np.asarray(out)
    assert set(np.unique(result)) <= {0, 5, 77} and result[2, 0, 0] == 77
    assert (result == 5).any()


def test_an_object_prompted_mid_propagation_waits_for_the_next_one(mini_model):
    tracker = ns.VideoTracker(mini_model, moving_disc(6))
    tracker.add_prompt(0, 1, points=[(15, 20)], labels=[1])
    run = tracker.propagate()
    assert next(run).frame == 0
    tracker.add_prompt(3, 2, points=[(5, 5)], labels=[1])  # the user adds an object meanwhile
    rest = list(run)  # the run goes on (it used to fail on the object with no memory)
    assert [r.frame for r in rest] == [1, 2, 3, 4, 5]
    assert (rest[0].logits[1] < -1000).all()  # object 2: no result before it is tracked
    again = list(tracker.propagate())  # starts from the new prompt, and follows both objects
    assert again[0].frame == 3 and again[-1].obj_ids == (1, 2)
    assert (again[-1].logits[1] > -1000).any()
