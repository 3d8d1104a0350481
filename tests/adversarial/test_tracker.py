"""VideoTracker against odd stacks, mask prompts, ids, interruptions and failures: refused
input leaves the tracker as it was; valid but unusual input gives the right result."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr
from conftest import moving_disc, tracker_state

import napari_sam2 as ns

refused = pytest.mark.refused
handled = pytest.mark.handled


@pytest.fixture
def tracker(mini_model):
    t = ns.VideoTracker(mini_model, moving_disc(6))
    t.add_prompt(0, 1, points=[(15, 20)], labels=[1])
    yield t
    t.close()


def final_results(results) -> dict[int, np.ndarray]:
    """Frame -> logits of the last result yielded for it (``both`` yields some twice)."""
    return {r.frame: r.logits for r in results}


# ------------------------------------------------------------------------------ mask prompts
def square(shape=(40, 56), value=1.0, dtype=np.float32):
    m = np.zeros(shape, dtype)
    m[10:22, 14:30] = value
    return m


@handled
@pytest.mark.parametrize(
    "mask",
    [
        square(dtype=np.uint8),
        square(dtype=np.int64),
        square(dtype=np.float64),
        np.where(square() > 0, 0.9, 0.05).astype(np.float32),  # a probability map
        np.where(square() > 0, 0.5, 0.49).astype(np.float32),  # 0.5 is in, below is out
    ],
    ids=["uint8-01", "int64-01", "float-01", "probabilities", "threshold-0.5"],
)
def test_mask_prompts_of_any_accepted_kind_equal_the_bool_mask(mini_model, mask):
    expected = ns.VideoTracker(mini_model, moving_disc(3)).add_prompt(0, 1, mask=square() > 0)
    got = ns.VideoTracker(mini_model, moving_disc(3)).add_prompt(0, 1, mask=mask)
    np.testing.assert_array_equal(got.logits, expected.logits)


@refused
@pytest.mark.parametrize(
    ("mask", "match"),
    [
        (np.where(square() > 0, np.nan, 0.0), r"NaN or infinite"),
        (square(value=np.inf), r"NaN or infinite"),
        (square(value=255.0), r"probabilities in \[0, 1\].*\[0, 255\].*image > 0"),
        (square(value=-3.0) + 1, r"probabilities in \[0, 1\].*logits > 0"),
        (square(value=7, dtype=np.int32), r"only 0 and 1, found values \[0 7\].*labels == obj_id"),
        (square().astype(np.complex64), r"dtype complex64"),
        (np.zeros((40, 56), bool), r"empty"),
        (np.full((40, 56), 0.3, np.float32), r"empty"),
        (square()[:, :50], r"frame's shape \(40, 56\), got \(40, 50\)"),
        ("mask", r"frame's shape"),
    ],
    ids=["nan", "inf", "0-255", "logits", "label-image", "complex", "empty", "all-below-0.5",
         "shape", "a-string"],
)  # fmt: skip
def test_bad_mask_prompts_are_refused_and_change_nothing(tracker, mask, match):
    before = tracker_state(tracker)
    with pytest.raises(ns.PromptError, match=match):
        tracker.add_prompt(0, 2, mask=mask)
    assert tracker_state(tracker) == before


# ------------------------------------------------------------------------------ stacks
@refused
@pytest.mark.parametrize(
    ("frames", "kwargs", "match"),
    [
        (np.zeros((4, 3, 40, 56), np.uint8), {}, r"channels-first.*np\.moveaxis\(stack, 1, -1\)"),
        ([np.zeros((40, 56), np.uint8), np.zeros((40, 56), np.float32)], {}, r"mixed dtypes"),
        (np.zeros((4, 40, 56), np.complex64), {}, r"complex data"),
        (np.zeros((4, 40, 56, 2), np.uint16), {"channel": 2}, r"channel 2 is out of range"),
        (np.full((4, 40, 56), np.nan, np.float32), {}, r"frame 0: the frame contains 2240 NaN"),
        (np.zeros((4, 5, 56), np.uint8), {}, r"at least 8x8 pixels"),
    ],
    ids=["TCHW", "mixed-dtypes", "complex", "channel", "nan", "too-small"],
)
def test_bad_stacks_are_refused_when_the_tracker_is_made(mini_model, frames, kwargs, match):
    with pytest.raises(ns.FrameSourceError, match=match):
        ns.VideoTracker(mini_model, frames, **kwargs)


class Lazy:
    """A lazy source whose frames come back with whatever ``read`` gives (like a reader that
    fails or changes under the tracker)."""

    def __init__(self, data, read=None):
        self.data, self.shape, self.dtype = data, data.shape, data.dtype
        self.read = read or (lambda t: self.data[t])
        self.calls: list[int] = []

    def __len__(self):
        return len(self.data)

    def __getitem__(self, t):
        self.calls.append(t)
        return self.read(t)


@refused
def test_a_frame_of_another_dtype_is_named_when_read(mini_model):
    data = moving_disc(4)
    source = Lazy(data, lambda t: data[t].astype(np.float32) if t == 1 else data[t])
    tracker = ns.VideoTracker(mini_model, source)
    tracker.add_prompt(0, 1, points=[(15, 20)], labels=[1])
    with pytest.raises(ns.FrameSourceError, match=r"frame 1 has dtype float32.*stack is uint8"):
        list(tracker.propagate())


@refused
def test_a_nan_frame_not_sampled_for_the_window_is_named_when_reached(mini_model):
    data = moving_disc(20, dtype=np.float32)
    data[1, 3, 3] = np.nan  # frames 0, 2, 5, 8, ... set the window; frame 1 is not among them
    tracker = ns.VideoTracker(mini_model, data)
    tracker.add_prompt(0, 1, points=[(15, 20)], labels=[1])
    results = tracker.propagate()
    assert next(results).frame == 0
    with pytest.raises(ns.FrameSourceError, match=r"frame 1: the frame contains 1 NaN"):
        next(results)


@handled
def test_the_window_is_set_on_the_chosen_channel(mini_model):
    bright = moving_disc(4, dtype=np.uint16, value=60000)
    dim = moving_disc(4, dtype=np.uint16, value=300)
    both = np.stack([bright, dim], axis=-1)  # (T, H, W, 2)
    t2 = ns.VideoTracker(mini_model, both, channel=1)
    alone = ns.VideoTracker(mini_model, dim)
    assert t2.source.window == alone.source.window  # not stretched by channel 0
    np.testing.assert_array_equal(
        t2.add_prompt(0, 1, points=[(15, 20)], labels=[1]).logits,
        alone.add_prompt(0, 1, points=[(15, 20)], labels=[1]).logits,
    )


@handled
@pytest.mark.parametrize(
    "wrap",
    [
        lambda a, tmp: da.from_array(a, chunks=(2, 20, 56)),  # chunks across frames and rows
        lambda a, tmp: zarr.open_array(
            tmp / "s.zarr", mode="w", shape=a.shape, dtype=a.dtype, chunks=(3, 40, 7)
        ),  # fmt: skip
        lambda a, tmp: np.asfortranarray(a),
        lambda a, tmp: a[:, ::-1, ::-1].copy()[:, ::-1, ::-1],
        lambda a, tmp: list(a),
    ],
    ids=["dask", "zarr", "fortran", "negative-strides", "list"],
)
def test_any_array_like_stack_gives_the_numpy_result(mini_model, tmp_path, wrap):
    data = moving_disc(5)
    source = wrap(data, tmp_path)
    if isinstance(source, zarr.Array):
        source[:] = data

    def run(frames):
        t = ns.VideoTracker(mini_model, frames)
        t.add_prompt(1, 1, points=[(16, 21)], labels=[1])
        return final_results(t.propagate("both"))

    expected, got = run(data), run(source)
    assert got.keys() == expected.keys()
    for frame in expected:
        np.testing.assert_array_equal(got[frame], expected[frame])


# ------------------------------------------------------------------------------ interruptions
@handled
@pytest.mark.parametrize("stop_after", [2, 5, 8])  # in the forward pass, at the turn, backward
def test_cancelled_both_resumed_gives_the_uninterrupted_result(mini_model, stop_after):
    def fresh():
        t = ns.VideoTracker(mini_model, moving_disc(8))
        t.add_prompt(4, 1, points=[(19, 24)], labels=[1])
        t.add_prompt(4, 2, box=(0, 0, 12, 12))
        return t

    uninterrupted = list(fresh().propagate("both"))
    tracker = fresh()
    first = []
    for r in tracker.propagate("both"):
        first.append(r)
        if len(first) == stop_after:
            break  # Cancel
    rest = list(tracker.propagate("both"))
    assert len(first) + len(rest) == len(uninterrupted)  # nothing run twice
    assert [r.frame for r in first + rest] == [r.frame for r in uninterrupted]
    for a, b in zip(first + rest, uninterrupted):
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)


@handled
def test_a_failed_prefetch_is_retried_once_the_source_recovers(mini_model):
    data = moving_disc(5)
    failures = {3: 1}  # frame 3 fails once (a network share that blinks), then reads fine

    def flaky(t):
        if failures.get(t):
            failures[t] -= 1
            raise OSError(f"read error on frame {t}")
        return data[t]

    source = Lazy(data, flaky)
    tracker = ns.VideoTracker(mini_model, source)
    tracker.add_prompt(0, 1, points=[(15, 20)], labels=[1])
    got = final_results(tracker.propagate())
    assert source.calls.count(3) == 2 and failures[3] == 0  # the prefetch failed, then a read
    reference = ns.VideoTracker(mini_model, data)
    reference.add_prompt(0, 1, points=[(15, 20)], labels=[1])
    for frame, logits in final_results(reference.propagate()).items():
        np.testing.assert_array_equal(got[frame], logits)


@refused
def test_a_source_that_stays_broken_raises_its_error(mini_model):
    data = moving_disc(4)

    def broken(t):
        if t == 2:
            raise OSError("the disk is gone")
        return data[t]

    tracker = ns.VideoTracker(mini_model, Lazy(data, broken))
    tracker.add_prompt(0, 1, points=[(15, 20)], labels=[1])
    done = []
    with pytest.raises(OSError, match="the disk is gone"):
        for r in tracker.propagate():
            done.append(r.frame)
    assert done == [0, 1]  # consistently partial: what was yielded stays yielded


@refused
@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.add_prompt(0, 1, points=[(15, 20)], labels=[1]),
        lambda t: list(t.propagate()),
        lambda t: t.plan(),
        lambda t: t.result(0),
        lambda t: t.embed(1),
        lambda t: t.clear_prompts(0, 1),
        lambda t: t.remove_object(1),
    ],
    ids=["add_prompt", "propagate", "plan", "result", "embed", "clear_prompts", "remove_object"],
)
def test_a_closed_tracker_says_so(tracker, call):
    tracker.close()
    with pytest.raises(RuntimeError, match=r"VideoTracker is closed.*create a new"):
        call(tracker)
    tracker.close()  # twice is fine


# ------------------------------------------------------------------------------ ids
@refused
@pytest.mark.parametrize(
    ("obj_id", "match"),
    [
        (2**64, r"too large for any label array.*uint64"),
        (0, r"positive integers"),
        (-3, r"positive integers"),
        (1.0, r"positive integers"),
        ("1", r"positive integers"),
        (True, r"positive integers"),
    ],
)
def test_ids_no_label_can_hold_are_refused(tracker, obj_id, match):
    before = tracker_state(tracker)
    with pytest.raises(ns.PromptError, match=match):
        tracker.add_prompt(0, obj_id, points=[(15, 20)], labels=[1])
    assert tracker_state(tracker) == before


@handled
def test_ids_up_to_uint64_max_are_tracked_and_written(tracker):
    big = 2**64 - 1
    tracker.add_prompt(0, np.uint64(big), points=[(30, 40)], labels=[1])
    labels = ns.track_to_labels(tracker)
    assert labels.dtype == np.uint64 and tracker.obj_ids == (1, big)
    assert set(np.unique(labels)) <= {0, 1, big} and (labels == big).any()
