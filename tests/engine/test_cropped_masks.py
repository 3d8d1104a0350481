"""Mask prompts resized from their bounding box (engine/frame_prompts.py) and given cropped
(WindowMasks of one mask): the values of F.interpolate(antialias=True) without a full-frame
float array, and the same prompt as the full mask in VideoTracker and WindowTracker."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import napari_sam2 as ns
from napari_sam2.engine.frame_prompts import (
    EXACT_RESIZE_PIXELS,
    label_records,
    model_masks,
    resize_from_bounds,
)
from napari_sam2.engine.window_masks import WindowMasks, mask_bounds


def reference(mask: np.ndarray, s: int) -> np.ndarray:
    t = torch.from_numpy(mask).float()[None, None]
    out = F.interpolate(t, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
    return out[0, 0].numpy()


def random_mask(rng, h: int, w: int) -> np.ndarray:
    """A noisy rectangle (sometimes touching a border, sometimes empty or full)."""
    kind = rng.integers(6)
    m = np.zeros((h, w), bool)
    if kind == 0:
        return m
    if kind == 1:
        return ~m
    r0, r1 = sorted(rng.integers(0, h + 1, 2))
    c0, c1 = sorted(rng.integers(0, w + 1, 2))
    if kind == 2:
        r0, c0 = 0, 0  # touching the top-left corner
    if kind == 3:
        r1, c1 = h, w  # touching the bottom-right corner
    m[r0:r1, c0:c1] = rng.random((r1 - r0, c1 - c0)) < rng.uniform(0.2, 1.0)
    return m


def test_the_bounding_box_resize_is_f_interpolate_antialiased():
    """Down- and up-scaling, integer and other scales, masks on borders, empty and full: the
    float values agree with PyTorch's to 1e-5 (float32 rounding) and so do the thresholded masks
    away from ties; the cropped form gives the very same values."""
    rng = np.random.default_rng(0)
    shapes = [(512, 512, 128), (1000, 777, 128), (12345 // 20, 4100 // 20, 100), (37, 90, 128)]
    shapes += [
        (int(h), int(w), int(s)) for h, w, s in rng.integers([2, 2, 8], [900, 900, 300], (40, 3))
    ]
    worst = 0.0
    for h, w, s in shapes:
        for _ in range(4):
            m = random_mask(rng, h, w)
            ref = reference(m, s)
            got = resize_from_bounds(m, s)
            worst = max(worst, float(np.abs(got - ref).max()))
            away = np.abs(ref - 0.5) > 1e-5
            np.testing.assert_array_equal((got >= 0.5)[away], (ref >= 0.5)[away])
            bounds = mask_bounds(m)
            if bounds is not None:
                r0, c0, r1, c1 = bounds
                cropped = WindowMasks(m[r0:r1, c0:c1], bounds, (h, w))
                np.testing.assert_array_equal(resize_from_bounds(cropped, s), got)
            else:
                assert not got.any()
    assert worst <= 1e-5, worst


@pytest.mark.parametrize(("n", "s"), [(20000, 1024), (12345, 1024), (19999, 1000), (7, 1024)])
def test_the_weights_hold_at_giant_sizes(n, s):
    """PyTorch computes its weights in float32, whose centres lose precision on long axes (at
    12345 -> 1024 exact weights differ from its by 2e-5): ours follow its arithmetic."""
    rng = np.random.default_rng(1)
    m = np.zeros((n, 3), bool)
    m[rng.random(n) < 0.5] = True
    m[: n // 3, 1] = True
    t = torch.from_numpy(m).float()[None, None]
    ref = F.interpolate(t, size=(s, 3), mode="bilinear", align_corners=False, antialias=True)
    from napari_sam2.engine.frame_prompts import _pass, antialias_weights

    got = _pass(m.T.astype(np.float32), 0, antialias_weights(n, s), 0, s, np.float64).T
    assert np.abs(got - ref[0, 0].numpy()).max() <= 1e-6


def test_a_big_frame_mask_gives_the_model_the_mask_f_interpolate_gives(mini_model):
    """Above EXACT_RESIZE_PIXELS model_masks takes the bounding-box path: the same model mask
    as F.interpolate on the full frame, from the full array or from its crop alike; an empty
    mask is zeros."""
    h, w = 2100, 2300
    assert h * w > EXACT_RESIZE_PIXELS
    rr, cc = np.mgrid[:h, :w]
    m = (rr - 700) ** 2 + ((cc - 1500) / 1.7) ** 2 < 260**2
    m[1990:, 2200:] = True  # a second part, in the corner
    s = mini_model.config.image_size
    expected = reference(m, s) >= 0.5
    crop = WindowMasks(m[400:, 1000:], (400, 1000, h, w), (h, w))
    full, cut, empty = model_masks([m, crop, np.zeros((h, w), bool)], mini_model)[:, 0]
    assert (full.numpy() == expected).mean() > 0.9999
    assert torch.equal(full, cut) and not empty.any()


def test_a_cropped_mask_prompt_is_the_full_mask_prompt(mini_model):
    """VideoTracker and WindowTracker take a cropped mask as the same prompt as its full
    frame: the same results, bit for bit (here on a small frame, and on a label image's
    objects, which label_records now cuts from their bounding boxes)."""
    frames = np.zeros((2, 320, 300), np.uint8)
    frames[:, 100:160, 120:200] = 200
    full = np.zeros((320, 300), bool)
    full[102:158, 122:198] = True
    crop = WindowMasks(full[90:170, 100:220], (90, 100, 170, 220), (320, 300))
    for make in (ns.VideoTracker, ns.WindowTracker):
        a, b = make(mini_model, frames), make(mini_model, frames)
        ra = a.add_prompt(0, 1, mask=full)
        rb = b.add_prompt(0, 1, mask=crop)
        np.testing.assert_array_equal(ra.logits, rb.logits)
        if make is ns.WindowTracker:
            assert a.windows == b.windows
        pa = {r.frame: r.logits for r in a.propagate("forward")}
        pb = {r.frame: r.logits for r in b.propagate("forward")}
        np.testing.assert_array_equal(pa[1], pb[1])


def test_label_records_of_a_big_label_image_are_those_of_full_masks(mini_model):
    """label_records cuts each object from its bounding box: on a frame above the threshold
    the same records as the full masks' F.interpolate, and absent and vanishing ids alike."""
    h, w = 2100, 2050
    labels = np.zeros((h, w), np.uint16)
    labels[100:600, 200:900] = 3
    labels[1500:2100, 1800:2050] = 7  # on the corner
    labels[1000:1003, 1000:1003] = 9  # too small for a 128-pixel input
    emb = mini_model.encode_image(torch.zeros(1, 3, 128, 128))
    records, dropped = label_records(mini_model, emb, labels, [3, 7, 9, 12], {12}, 2)
    assert dropped == [9] and [i for i, _ in records] == [3, 7, 12]
    s = mini_model.config.image_size
    from napari_sam2.engine.conditioning import mask_as_output

    for obj_id, record in records:
        full = labels == obj_id  # all False for the absent 12
        expected = torch.from_numpy(reference(full, s) >= 0.5).float()[None, None]
        assert expected.any() or obj_id == 12
        made = mask_as_output(mini_model, emb, expected)
        torch.testing.assert_close(record.low_res, made.low_res, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------- memory on giant slices
def _status(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/self/status")


def peak_growth(work):
    """(peak resident-memory growth, peak traced numpy/Python allocation) while ``work`` runs.
    The peak RSS (VmHWM) is reset first (``/proc/self/clear_refs``), so the growth counts every
    allocation, torch's included, that touched memory; tracemalloc sees numpy's alone."""
    import tracemalloc

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status("VmRSS")
    tracemalloc.start()
    try:
        out = work()
        traced = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return out, _status("VmHWM") - before, traced


@pytest.fixture(scope="module")
def model256():
    from official import random_tiny

    return random_tiny(256, seed=6, object_bias=5.0)


def test_a_click_on_a_giant_slice_makes_nothing_frame_sized(tmp_path, model256):
    """A click answered in a window (WindowedPrompts, what a tiled PromptSession runs) on a
    12000² lazy slice: its mask becomes the object's prompt in the downscaled tracker without a
    full-frame array. Before, each click made a 144 MB bool frame, its stacked copy and a 576 MB
    float32 copy (RSS grew by about 700 MB, numpy's allocations peaked at 275 MB); now the click
    grows memory by less than a quarter of one bool frame, torch's allocations included (about
    3 MB here)."""
    from napari_sam2.engine.windowed_prompts import WindowedPrompts

    side = 12_000
    path = tmp_path / "giant.npy"
    frames = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(1, side, side))
    rr, cc = np.mgrid[:200, :200]
    for r, c in [(5000, 6000), (5060, 6040)]:
        frames[0, r - 100 : r + 100, c - 100 : c + 100][(rr - 100) ** 2 + (cc - 100) ** 2 < 400] = (
            200
        )
    frames.flush()
    del frames
    tracker = ns.VideoTracker(model256, np.load(path, mmap_mode="r"))
    windows = WindowedPrompts(tracker, tiles=True)
    # the first click embeds the downscaled slice and the window (bounded by themselves)
    assert windows.prompt(0, 1, ((5000.0, 6000.0, True),), None)
    done, growth, traced = peak_growth(
        lambda: windows.prompt(0, 2, ((5060.0, 6040.0, True),), None)
    )
    answer = windows.answers[(0, 2)]
    assert done and answer.conditions  # the mask is the tracker's prompt: the path measured
    assert tracker._objects[2].prompts[0].is_mask
    frame_bytes = side * side  # one bool frame
    assert traced < frame_bytes / 4, f"numpy allocated {traced / 2**20:.0f} MiB"
    assert growth < frame_bytes / 4, f"RSS grew by {growth / 2**20:.0f} MiB"


def test_a_correction_click_in_windows_on_a_giant_slice_makes_nothing_frame_sized(
    tmp_path, model256
):
    """A tiled PromptSession on two 12000² lazy slices, propagated in windows: a correction
    click on the propagated slice is answered by the window tracker and its mask given to the
    downscaled tracker cropped (SessionWindows.prompt). Before: about 690 MB of RSS growth and
    275 MB of numpy allocations per click; now about 11 MB and 2 MB."""
    from napari_sam2.engine.session import PointRow, PromptSession

    side = 12_000
    path = tmp_path / "giant.npy"
    frames = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(2, side, side))
    rr, cc = np.mgrid[:200, :200]
    for t in range(2):
        disc = (rr - 100) ** 2 + (cc - 100) ** 2 < 90**2
        frames[t, 4900 + t : 5100 + t, 5900:6100][disc] = 200
    frames.flush()
    del frames
    session = PromptSession(model256, np.load(path, mmap_mode="r"), tiles=True)
    session.sync_frame(0, [PointRow(1, 0, 5000.0, 6000.0, True)], [])
    assert [r.frame for r in session.propagate("forward")] == [0, 1]
    windows = session.window_tracking
    # the first correction embeds the downscaled slice 1 (bounded by itself)
    assert windows.prompt(1, 1, ((5001.0, 6000.0, True), (5030.0, 6030.0, True)), None)
    clicks = ((5001.0, 6000.0, True), (5040.0, 6040.0, False))
    done, growth, traced = peak_growth(lambda: windows.prompt(1, 1, clicks, None))
    assert done and session.windows.answers[(1, 1)].conditions  # given as a mask prompt
    assert session.tracker._objects[1].prompts[1].is_mask
    frame_bytes = side * side
    assert traced < frame_bytes / 4, f"numpy allocated {traced / 2**20:.0f} MiB"
    assert growth < frame_bytes / 4, f"RSS grew by {growth / 2**20:.0f} MiB"


def test_a_giant_label_image_is_made_into_prompts_without_a_frame_per_object(model256):
    """label_records on a 12000² label image of three objects: each object's mask is cut from
    its bounding box (before: a bool frame per object, their stack and its float32 copy,
    about 2.3 GB here)."""
    side = 12_000
    labels = np.zeros((side, side), np.uint8)
    labels[1000:1400, 2000:2600] = 1
    labels[8000:9000, 100:700] = 2
    labels[11_500:, 11_000:] = 3
    emb = model256.encode_image(torch.zeros(1, 3, 256, 256))
    (records, dropped), growth, traced = peak_growth(
        lambda: label_records(model256, emb, labels, [1, 2, 3], set(), 16)
    )
    assert dropped == [] and [i for i, _ in records] == [1, 2, 3]
    frame_bytes = side * side
    assert traced < frame_bytes / 4, f"numpy allocated {traced / 2**20:.0f} MiB"
    assert growth < frame_bytes / 4, f"RSS grew by {growth / 2**20:.0f} MiB"


def test_label_prompts_on_a_giant_slice_reach_the_windows_without_a_sorted_frame(
    tmp_path, model256
):
    """A tiled PromptSession given a 12000² label image as prompts hands them to its window
    tracker at Propagate (SessionWindows.feed) by the objects' bounding boxes. Before, feed and
    the check of the label image (prompts.label_ids) each sorted a copy of the whole image to
    see which objects it holds (np.unique: 275 MiB of numpy allocations for these uint16
    labels); now one pass over it finds their bounding boxes."""
    from napari_sam2.engine.session import PromptSession

    side = 12_000
    path = tmp_path / "giant.npy"
    frames = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(2, side, side))
    frames[:, 5000:5060, 6000:6060] = 200
    frames.flush()
    del frames
    labels = np.zeros((side, side), np.uint16)
    labels[5000:5060, 6000:6060] = 7
    session = PromptSession(model256, np.load(path, mmap_mode="r"), tiles=True)
    session.add_label_prompts(0, labels)
    windows = session.window_tracking
    _, growth, traced = peak_growth(windows.feed)
    wt = windows.window_tracker
    assert wt is not None and 7 in wt.obj_ids and wt.prompted_frames(7) == [0]
    r0, c0, r1, c1 = wt._home[7]  # followed in a window, not in the downscaled frame
    assert (r1 - r0, c1 - c0) == (256, 256)
    frame_bytes = side * side
    assert traced < frame_bytes / 4, f"numpy allocated {traced / 2**20:.0f} MiB"
    assert growth < frame_bytes / 4, f"RSS grew by {growth / 2**20:.0f} MiB"
