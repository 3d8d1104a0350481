"""Many objects in the tracker: label images as prompts, objects computed in bounded batches
with the object-independent work done once per frame. The real network at a 128-pixel input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import napari_sam2 as ns
from napari_sam2.engine.labels import compose_labels, resolve_overlaps


def cells(t=6, h=64, w=80):
    """Seven bright discs drifting over a dim background, and the label image of frame 0."""
    rr, cc = np.mgrid[:h, :w]
    centres = [(12, 12), (12, 40), (12, 66), (34, 24), (34, 56), (52, 12), (52, 66)]
    stack = np.full((t, h, w), 20, np.uint8)
    labels = np.zeros((h, w), np.uint16)
    for i, (r, c) in enumerate(centres):
        for f in range(t):
            stack[f][(rr - r - f % 3) ** 2 + (cc - c) ** 2 < 7**2] = 160 + 10 * i
        labels[(rr - r) ** 2 + (cc - c) ** 2 < 7**2] = 10 * (i + 1)
    return stack, labels


def track(model, object_batch, labels=None):
    stack, lab = cells()
    tracker = ns.VideoTracker(model, stack, object_batch=object_batch)
    tracker.add_labels(0, lab if labels is None else labels)
    return tracker, {r.frame: r.logits for r in tracker.propagate()}


def test_label_image_prompts_every_id_as_its_mask(mini_model):
    stack, labels = cells()
    tracker = ns.VideoTracker(mini_model, stack)
    res = tracker.add_labels(0, labels)
    assert res.obj_ids == (10, 20, 30, 40, 50, 60, 70) == tracker.obj_ids and res.dropped == ()
    for k, obj_id in enumerate(res.obj_ids):
        alone = ns.VideoTracker(mini_model, stack).add_prompt(0, obj_id, mask=labels == obj_id)
        np.testing.assert_allclose(res.logits[k], alone.logits[0], atol=1e-5)


def test_some_ids_only_as_a_correction(mini_model):
    stack, labels = cells()
    tracker = ns.VideoTracker(mini_model, stack)
    tracker.add_labels(0, labels)
    list(tracker.propagate())
    moved = np.roll(labels, 3, axis=1)
    res = tracker.add_labels(4, moved, obj_ids=[30])
    assert res.obj_ids == (30,)
    assert tracker.prompted_frames(30) == [0, 4] and tracker.prompted_frames(20) == [0]


def test_ids_too_small_for_the_model_are_reported_not_dropped_silently(mini_model):
    stack, labels = cells(h=256, w=320)[0], np.zeros((256, 320), np.uint16)
    labels[100:140, 100:150] = 5
    labels[3, 3] = 6  # one pixel of a 256x320 frame: nothing of it left at 128x128
    tracker = ns.VideoTracker(mini_model, stack)
    with pytest.warns(UserWarning, match=r"object id\(s\) \[6\] on frame 0 are too small"):
        res = tracker.add_labels(0, labels)
    assert res.obj_ids == (5,) and res.dropped == (6,) and tracker.obj_ids == (5,)


@pytest.mark.parametrize(
    ("labels", "kwargs", "match"),
    [
        (np.zeros((64, 80), np.uint16), {}, "the labels are empty"),
        (np.full((64, 80), -2, np.int32), {}, "negative values"),
        (np.ones((64, 80), np.float32), {}, "integer object ids"),
        (np.ones((64, 81), np.uint16), {}, r"frame's shape \(64, 80\)"),
        (np.ones((64, 80), np.uint16), {"obj_ids": [2]}, r"object id\(s\) \[2\] are not in"),
        (np.ones((64, 80), np.uint16), {"obj_ids": []}, "obj_ids is empty"),
    ],
)
def test_bad_label_images_are_refused_and_change_nothing(mini_model, labels, kwargs, match):
    tracker = ns.VideoTracker(mini_model, cells()[0])
    tracker.add_prompt(0, 1, points=[(12, 12)], labels=[1])
    before = (tracker.obj_ids, tracker.prompted_frames(), tracker.memory_stats())
    with pytest.raises(ns.PromptError, match=match):
        tracker.add_labels(0, labels, **kwargs)
    assert (tracker.obj_ids, tracker.prompted_frames(), tracker.memory_stats()) == before


def test_a_bool_mask_is_object_one(mini_model):
    stack, labels = cells()
    res = ns.VideoTracker(mini_model, stack).add_labels(0, labels == 40)
    assert res.obj_ids == (1,)


def test_batches_bound_the_work_and_give_the_one_batch_result(mini_model):
    sizes = []
    hook = mini_model.sam_mask_decoder.register_forward_hook(
        lambda m, args, out: sizes.append(out.masks.shape[0])
    )
    try:
        _, one = track(mini_model, object_batch=64)
        sizes.clear()
        _, small = track(mini_model, object_batch=3)
    finally:
        hook.remove()
    assert max(sizes) == 3 and sizes.count(3) >= 2  # 7 objects: batches of 3, 3, 1 (and the prompt)
    for frame, logits in one.items():
        np.testing.assert_allclose(small[frame], logits, atol=1e-4)


@pytest.mark.parametrize("object_batch", [1, 16])
def test_object_independent_work_runs_once_per_frame(mini_model, object_batch):
    calls: dict[int, list[int]] = {}
    layers = mini_model.memory_attention.layers
    hooks = [
        layer.self_attn.register_forward_hook(
            lambda m, args, out, i=i: calls.setdefault(i, []).append(args[0].shape[0])
        )
        for i, layer in enumerate(layers)
    ]
    projections = []
    hooks.append(
        mini_model.memory_encoder.pix_feat_proj.register_forward_hook(
            lambda m, args, out: projections.append(args[0].shape[0])
        )
    )
    try:
        track(mini_model, object_batch=object_batch)  # 7 objects, frames 1..5 tracked
    finally:
        for h in hooks:
            h.remove()
    assert calls[0] == [1] * 5  # the first self-attention: once per frame for all objects
    per_frame = [object_batch] * (7 // object_batch) + [7 % object_batch] * (7 % object_batch > 0)
    assert sorted(calls[1]) == sorted(per_frame * 5)  # per object from the first cross-attention
    # the memory encoder's projection: once per tracked frame, and once for the prompted frame
    assert projections == [1] * 6


def test_each_record_holds_only_its_own_object(mini_model):
    tracker, _ = track(mini_model, object_batch=16)
    for obj in tracker._objects.values():
        for frame in obj.history.frames():
            record = obj.history.get(frame)
            for t in (record.memory, record.low_res, record.pointer):
                assert t.untyped_storage().nbytes() == t.numel() * t.element_size()


def test_overlaps_resolved_in_chunks_equal_one_argmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (37, 20, 24)).astype(np.float32)
    logits[5] = logits[21]  # a tie between chunks: the first wins, as argmax does
    result = ns.FrameResult(0, tuple(range(1, 38)), logits)
    full_winner, full_fg = resolve_overlaps(logits)
    assert (np.argmax(logits, 0) == full_winner).all()
    composed = compose_labels(np.zeros((20, 24), np.uint16), result)  # 16 objects per chunk
    np.testing.assert_array_equal(composed, np.where(full_fg, full_winner + 1, 0))


def test_tracking_many_objects_writes_them_all(mini_model):
    tracker, _ = track(mini_model, object_batch=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels = ns.track_to_labels(tracker)
    assert labels.dtype == np.uint16
    assert set(np.unique(labels[0])) == {0, 10, 20, 30, 40, 50, 60, 70}


def test_object_batch_must_be_positive(mini_model):
    with pytest.raises(ValueError, match="object_batch must be a positive integer"):
        ns.VideoTracker(mini_model, cells()[0], object_batch=0)


@pytest.mark.parametrize(
    ("device", "image_size", "threads", "expected"),
    [
        ("cpu", 1024, 2, 1),  # one object's operations are large: batches only cost cache
        ("cpu", 512, 2, 4),  # small operations: a batch of 4 waits less between threads
        ("cpu", 256, 16, 16),
        ("cpu", 128, 2, 16),  # never more than a GPU's batch
        ("cpu", 512, 1, 1),  # one thread waits for nothing: one object at a time
        ("cuda", 1024, 1, 16),
    ],
)
def test_default_object_batch_follows_input_size_and_threads(device, image_size, threads, expected):
    from napari_sam2.engine.conditioning import default_object_batch

    got = default_object_batch(torch.device(device), image_size // 16, threads)
    assert got == expected


def test_tracker_default_object_batch_on_the_cpu(mini_model):
    stack, labels = cells()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        batched = ns.VideoTracker(mini_model, stack)
        torch.set_num_threads(1)
        alone = ns.VideoTracker(mini_model, stack)
    finally:
        torch.set_num_threads(before)
    assert (batched.object_batch, alone.object_batch) == (16, 1)  # 128² input: 8² tokens
    for tracker in (batched, alone):  # the same masks either way
        tracker.add_labels(0, labels)
    results = [{r.frame: r.logits for r in t.propagate()} for t in (batched, alone)]
    for frame, logits in results[1].items():
        np.testing.assert_allclose(results[0][frame], logits, atol=1e-4)
    for tracker in (batched, alone):
        tracker.close()
