"""Segment everything on tiles: window records merged into one list (cut masks kept from the
window where they lie whole, duplicates removed by mask IoU), progress and cancel over windows,
and memory bounded by the window, not the image."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import napari_sam2 as ns
from napari_sam2.engine.automatic import MaskRecord
from napari_sam2.engine.automatic_tiles import mask_iou, merge_window_records
from napari_sam2.engine.tiles import TileGrid

SHAPE = (600, 700)
GRID = TileGrid(SHAPE, 256, 64)  # windows start at rows 0, 192, 344 and cols 0, 192, 384, 444


def disc(center, radius, shape=SHAPE):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return (rr - center[0]) ** 2 + (cc - center[1]) ** 2 < radius**2


def record_in(window, mask_in_image, score=0.9):
    """What a window's generator reports for the part of ``mask_in_image`` inside ``window``,
    in window coordinates."""
    r0, c0, r1, c1 = window
    m = mask_in_image[r0:r1, c0:c1]
    rows, cols = np.nonzero(m)
    box = (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
    return MaskRecord(
        box_mask=m[box[0] : box[2], box[1] : box[3]].copy(),
        box=tuple(int(v) for v in box),
        image_shape=(r1 - r0, c1 - c0),
        score=score,
        stability=0.97,
        point=(float(rows.mean()), float(cols.mean())),
        area=int(m.sum()),
        crop_box=(0, 0, r1 - r0, c1 - c0),
    )


def test_an_object_cut_by_a_window_border_becomes_one_mask():
    obj = disc((100, 250), 30)  # cut by window (0, 0, 256, 256)'s right side, whole in col 192
    left, middle = (0, 0, 256, 256), (0, 192, 256, 448)
    found = [(left, [record_in(left, obj, 0.99)]), (middle, [record_in(middle, obj, 0.9)])]
    merged = merge_window_records(found, GRID, 0.7)
    assert len(merged) == 1
    (r,) = merged
    assert r.image_shape == SHAPE and r.score == 0.9  # the whole one, though it scored lower
    assert np.array_equal(r.mask, obj) and r.area == obj.sum()
    assert r.crop_box == middle


def test_one_object_whole_in_two_windows_is_one_mask():
    obj = disc((220, 220), 20)  # in the halo of four windows
    windows = [w for w in GRID.windows if w[0] <= 200 <= 241 <= w[2] and w[1] <= 200 <= 241 <= w[3]]
    assert len(windows) == 4
    found = [(w, [record_in(w, obj, 0.8 + 0.01 * i)]) for i, w in enumerate(windows)]
    merged = merge_window_records(found, GRID, 0.7)
    assert len(merged) == 1 and merged[0].score == pytest.approx(0.83)
    assert np.array_equal(merged[0].mask, obj)


def test_duplicates_are_found_by_mask_iou_not_box_iou():
    ring = disc((300, 300), 40) & ~disc((300, 300), 25)
    core = disc((300, 300), 40) & ~ring  # the same box, no shared pixel
    w = (192, 192, 448, 448)
    assert mask_iou(record_in(w, ring), record_in(w, core)) == 0.0
    slightly_other = disc((301, 300), 40) & ~disc((301, 300), 25)
    found = [
        (w, [record_in(w, ring, 0.95), record_in(w, core, 0.9)]),
        ((192, 384, 448, 640), []),
        ((0, 192, 256, 448), []),
        ((344, 192, 600, 448), []),
    ]
    found.append(((192, 0, 448, 256), []))
    found[0][1].append(record_in(w, slightly_other, 0.85))
    merged = merge_window_records(found, GRID, 0.7)
    assert [r.score for r in merged] == [0.95, 0.9]


@pytest.fixture(scope="module")
def picture():
    """Coloured discs on grey, one cut by a window border, one in the halo of four windows."""
    rng = np.random.default_rng(0)
    img = (60 + rng.integers(0, 10, (*SHAPE, 3))).astype(np.uint8)
    for center, radius, colour in (
        ((100, 250), 30, (200, 60, 60)),
        ((400, 500), 40, (60, 200, 60)),
        ((220, 220), 20, (60, 60, 220)),
        ((470, 150), 25, (220, 220, 60)),
    ):
        img[disc(center, radius)] = colour
    return img


@pytest.fixture(scope="module")
def masking_model(picture):
    """A 256-input network whose random masks survive the filters and differ from click to
    click (the weight changes of the segment-everything parity test)."""
    from official import build_official
    from parity.test_automatic_parity import make_masks_survive

    from napari_sam2.model import CONFIGS, SAM2Model

    official = build_official("sam2.1_hiera_tiny", seed=0, overrides=["++model.image_size=256"])
    make_masks_survive(official, np.ascontiguousarray(picture[:256, :256]))
    ours = SAM2Model(CONFIGS["sam2.1_hiera_tiny"].with_image_size(256))
    ours.load_state_dict(official.state_dict(), strict=True)
    return ours.eval()


def test_tiled_generation_reports_progress_over_windows_and_cancels(masking_model, picture):
    calls = []
    gen = ns.AutomaticMaskGenerator(masking_model, points_per_side=4, tiles=True)
    records = gen.generate(picture, progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (0, 12 * 16) and calls[-1] == (12 * 16, 12 * 16)
    assert len(records) >= 5 and all(r.image_shape == SHAPE for r in records)
    windows = set(GRID.windows)
    for r in records:  # each mask lies whole in the window it came from, away from its cuts
        assert r.crop_box in windows
        top, left, bottom, right = GRID.cut_sides(r.crop_box)
        assert not (top and r.box[0] <= r.crop_box[0] + 1)
        assert not (bottom and r.box[2] >= r.crop_box[2] - 1)
        assert not (left and r.box[1] <= r.crop_box[1] + 1)
        assert not (right and r.box[3] >= r.crop_box[3] - 1)
    assert [r.score for r in records] == sorted((r.score for r in records), reverse=True)
    for i, a in enumerate(records):  # no duplicates
        assert all(mask_iou(a, b) <= gen.crop_nms_thresh for b in records[i + 1 :])
    labels = ns.masks_to_labels(records, SHAPE)
    assert 0 < labels.max() <= len(records)

    class Stop(Exception):
        pass

    def cancel(done, total):
        if done >= 32:
            raise Stop

    with pytest.raises(Stop):
        gen.generate(picture, progress=cancel)


def test_untiled_by_default_and_auto_tiles_big_images(small_model, picture):
    small = picture[:300, :300]
    calls = []
    ns.AutomaticMaskGenerator(small_model, points_per_side=2, tiles="auto").generate(
        small, progress=lambda d, t: calls.append(t)
    )
    assert calls[0] == 4  # 300 < 1.5 x 256: one region
    calls.clear()
    ns.AutomaticMaskGenerator(small_model, points_per_side=2, tiles="auto").generate(
        picture, progress=lambda d, t: calls.append(t)
    )
    assert calls[0] == 12 * 4


def test_tiled_segment_everything_memory_is_bounded_by_the_window(masking_model, picture):
    """A lazy 1024² image, 25 windows of 256: the peak of traced (numpy and Python) memory
    stays below 8 bytes per image pixel (a window's pixels, floats and masks, and the records),
    while the untiled path alone holds the image as RGB floats (12 bytes per pixel) and its
    masks at full size, per batch. The untiled run goes first, so that one-time allocations
    (imports, caches) fall on it."""
    da = pytest.importorskip("dask.array")
    side = 1024
    data = np.tile(picture[:256, :256], (4, 4, 1))
    image = da.from_array(data, chunks=(256, 256, 3))
    gen = ns.AutomaticMaskGenerator(masking_model, points_per_side=4, tiles=True)
    peaks = {}
    for tiled in (False, True):
        gen.tiles = tiled
        tracemalloc.start()
        records = gen.generate(image)
        peaks[tiled] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert records
    print({k: f"{v / 1e6:.1f} MB" for k, v in peaks.items()})
    assert peaks[True] < 8 * side * side, f"peak {peaks[True] / 1e6:.1f} MB for a {side}² image"
    assert peaks[False] > 5 * peaks[True]  # 64 MB against 7 MB when measured
