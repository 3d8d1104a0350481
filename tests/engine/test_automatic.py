"""AutomaticMaskGenerator behaviour beyond parity: parameters, progress and cancellation, data
types, record conventions, label images, and the box suppression it is built on.
The real network at a 256-pixel input with random weights (the ``small_model`` fixture); the
filters are opened (thresholds 0) where a test needs masks to exist."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import batched_nms as torchvision_batched_nms

import napari_sam2 as ns
from napari_sam2.engine.mask_ops import batched_nms, crop_boxes, mask_boxes
from napari_sam2.engine.preprocess import to_model_input, to_rgb_unit

OPEN = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0)


class Cancelled(Exception):
    pass


@pytest.fixture(scope="module")
def rgb():
    """A non-square uint8 RGB image: two discs on noise."""
    rng = np.random.default_rng(0)
    rr, cc = np.mgrid[:90, :140]
    img = rng.integers(0, 60, (90, 140, 3)).astype(np.uint8)
    img[(rr - 40) ** 2 + (cc - 45) ** 2 < 20**2] = (220, 80, 80)
    img[(rr - 60) ** 2 + (cc - 105) ** 2 < 15**2] = (80, 80, 220)
    return img


@pytest.fixture(scope="module")
def records(small_model, rgb):
    gen = ns.AutomaticMaskGenerator(small_model, points_per_side=4, box_nms_thresh=1.0, **OPEN)
    found = gen.generate(rgb)
    assert len(found) > 3, "the tests below need several masks"
    return found


# ------------------------------------------------------------------ parameters and input
@pytest.mark.parametrize(
    "name, value",
    [
        ("points_per_side", 0),
        ("points_per_side", 2.5),
        ("points_per_batch", 0),
        ("pred_iou_thresh", -0.1),
        ("pred_iou_thresh", 1.5),
        ("stability_score_thresh", 1.01),
        ("stability_score_offset", -1.0),
        ("mask_threshold", float("nan")),
        ("box_nms_thresh", 0.0),
        ("box_nms_thresh", 1.2),
        ("crop_nms_thresh", 0.0),
        ("crop_overlap_ratio", 1.0),
        ("crop_overlap_ratio", -0.1),
        ("crop_n_layers", -1),
        ("crop_n_points_downscale_factor", 0),
        ("min_mask_region_area", -5),
    ],
)
def test_bad_parameters_raise_value_error_naming_them(small_model, name, value):
    with pytest.raises(ValueError, match=name):
        ns.AutomaticMaskGenerator(small_model, **{name: value})


def test_a_crop_layer_without_points_is_refused(small_model):
    with pytest.raises(ValueError, match="crop_n_points_downscale_factor"):
        ns.AutomaticMaskGenerator(
            small_model, points_per_side=4, crop_n_layers=2, crop_n_points_downscale_factor=4
        )


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((0, 10), dtype=np.uint8), "non-empty"),
        (np.zeros((6, 40, 3), dtype=np.uint8), "at least 8x8"),
        (np.zeros((40, 7), dtype=np.float32), "at least 8x8"),
        (np.zeros((2, 20, 20, 3), dtype=np.uint8), r"\(H, W\) or \(H, W, C\)"),
    ],
)
def test_bad_images_raise_value_error(small_model, image, match):
    gen = ns.AutomaticMaskGenerator(small_model, points_per_side=2)
    with pytest.raises(ValueError, match=match):
        gen.generate(image)


# ------------------------------------------------------------------ progress and work done
def test_progress_counts_clicks_over_all_crops(small_model, rgb):
    calls = []
    gen = ns.AutomaticMaskGenerator(
        small_model,
        points_per_side=4,
        points_per_batch=5,
        crop_n_layers=1,
        crop_n_points_downscale_factor=2,
    )
    gen.generate(rgb, progress=lambda done, total: calls.append((done, total)))
    total = 16 + 4 * 4  # the image with 4x4 clicks, then four crops with 2x2
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert all(t == total for _, t in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done)
    # Batches of 5 within each crop: 16 clicks -> 5, 5, 5, 1; each crop's 4 clicks -> 4.
    assert len(calls) == 1 + 4 + 4


def test_an_exception_in_progress_cancels_and_propagates(small_model, rgb):
    decoded = []
    hook = small_model.sam_mask_decoder.register_forward_hook(lambda *a: decoded.append(1))

    def cancel_after_first_batch(done, total):
        if done > 0:
            raise Cancelled

    gen = ns.AutomaticMaskGenerator(small_model, points_per_side=4, points_per_batch=4)
    try:
        with pytest.raises(Cancelled):
            gen.generate(rgb, progress=cancel_after_first_batch)
    finally:
        hook.remove()
    assert len(decoded) == 1  # of 4 batches


def test_the_image_encoder_runs_once_per_crop(small_model, rgb):
    encoded = []
    hook = small_model.image_encoder.register_forward_hook(lambda *a: encoded.append(1))
    try:
        ns.AutomaticMaskGenerator(small_model, points_per_side=2, crop_n_layers=1).generate(rgb)
    finally:
        hook.remove()
    assert len(encoded) == 5


# ------------------------------------------------------------------ records
def test_records_are_consistent_with_their_masks(records, rgb):
    h, w = rgb.shape[:2]
    for r in records:
        mask = r.mask
        assert mask.shape == (h, w) and mask.dtype == bool
        assert r.area == mask.sum() == r.box_mask.sum()
        r0, c0, r1, c1 = r.box
        rows, cols = np.nonzero(mask)
        assert (r0, c0, r1, c1) == (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
        assert r.box_mask.shape == (r1 - r0, c1 - c0)
        assert 0 <= r.point[0] < h and 0 <= r.point[1] < w
        assert r.crop_box == (0, 0, h, w)
        assert 0.0 <= r.stability <= 1.0
        assert isinstance(r.score, float) and isinstance(r.area, int)


def test_records_come_by_decreasing_score_and_are_deterministic(small_model, rgb, records):
    scores = [r.score for r in records]
    assert scores == sorted(scores, reverse=True)
    gen = ns.AutomaticMaskGenerator(small_model, points_per_side=4, box_nms_thresh=1.0, **OPEN)
    again = gen.generate(rgb)
    assert [(r.box, r.score, r.point) for r in again] == [
        (r.box, r.score, r.point) for r in records
    ]
    assert all((a.box_mask == b.box_mask).all() for a, b in zip(again, records))


def test_a_record_point_gives_the_same_mask_in_the_image_predictor(small_model, rgb, records):
    predictor = ns.ImagePredictor(small_model)
    predictor.set_image(rgb)
    for r in records[:3]:
        p = predictor.predict(points=[r.point], labels=[1])
        k = int(np.argmin(np.abs(p.scores - r.score)))
        assert abs(p.scores[k] - r.score) < 1e-4
        agree = (p.masks[k] == r.mask).mean()
        assert agree > 0.999


def test_filters_remove_masks(small_model, rgb, records):
    strict = ns.AutomaticMaskGenerator(
        small_model,
        points_per_side=4,
        box_nms_thresh=1.0,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.9,
    ).generate(rgb)
    assert len(strict) < len(records)
    assert all(r.stability >= 0.9 for r in strict)
    nms = ns.AutomaticMaskGenerator(small_model, points_per_side=4, **OPEN).generate(rgb)
    assert len(nms) < len(records)


@pytest.mark.parametrize("kind", ["uint16", "float", "rgba", "five_channels"])
def test_other_dtypes_and_layouts_work(small_model, kind):
    rng = np.random.default_rng(1)
    rr, cc = np.mgrid[:64, :96]
    disc = (rr - 30) ** 2 + (cc - 40) ** 2 < 15**2
    base = 300 + 3000 * disc + rng.normal(0, 40, disc.shape)
    image = {
        "uint16": base.astype(np.uint16),
        "float": (base / 1000 - 2).astype(np.float32),
        "rgba": np.dstack([base / 20] * 3 + [np.full_like(base, 255)]).astype(np.uint8),
        "five_channels": np.dstack([rng.normal(0, 1, base.shape)] * 2 + [base] * 3),
    }[kind]
    gen = ns.AutomaticMaskGenerator(small_model, points_per_side=3, channel=2, **OPEN)
    found = gen.generate(image)
    assert found and all(r.mask.shape == (64, 96) for r in found)


def test_non_8bit_images_use_one_window_for_all_crops(small_model, gray16):
    inputs = []
    hook = small_model.image_encoder.register_forward_hook(
        lambda _m, args, _out: inputs.append(args[0].clone())
    )
    gen = ns.AutomaticMaskGenerator(small_model, points_per_side=2, crop_n_layers=1)
    try:
        gen.generate(gray16)
    finally:
        hook.remove()
    rgb = to_rgb_unit(gray16, window=ns.IntensityWindow.from_percentiles(gray16))
    crops = crop_boxes(gray16.shape, 1, gen.crop_overlap_ratio)
    assert len(inputs) == len(crops) == 5
    for crop, x in zip(crops, inputs):
        expected = to_model_input(rgb[crop.y0 : crop.y1, crop.x0 : crop.x1], image_size=256)
        assert torch.equal(x, expected)
    # A window of the crop's own would show it differently.
    c = crops[1]
    own = to_model_input(to_rgb_unit(gray16[c.y0 : c.y1, c.x0 : c.x1]), image_size=256)
    assert not torch.equal(own, inputs[1])


def test_m2m_and_single_mask_and_small_regions_run(small_model, rgb, records):
    for kwargs in (dict(use_m2m=True), dict(multimask_output=False)):
        found = ns.AutomaticMaskGenerator(
            small_model, points_per_side=4, box_nms_thresh=1.0, **OPEN, **kwargs
        ).generate(rgb)
        assert found and [r.score for r in found] != [r.score for r in records]
    cleaned = ns.AutomaticMaskGenerator(
        small_model, points_per_side=4, box_nms_thresh=1.0, min_mask_region_area=50, **OPEN
    ).generate(rgb)
    assert [r.area for r in cleaned] != [r.area for r in records]


# ------------------------------------------------------------------ label images
def record(box_mask, top_left, score, shape=(10, 12)):
    """A hand-made record; box as the generator would compute it from the mask."""
    r0, c0 = top_left
    h, w = np.asarray(box_mask).shape
    return ns.MaskRecord(
        box_mask=np.asarray(box_mask, dtype=bool),
        box=(r0, c0, r0 + h, c0 + w),
        image_shape=shape,
        score=score,
        stability=1.0,
        point=(r0, c0),
        area=int(np.sum(box_mask)),
        crop_box=(0, 0, *shape),
    )


def test_masks_to_labels_higher_scores_win_overlaps():
    weak = record(np.ones((4, 4)), (2, 2), score=0.5)
    strong = record(np.ones((4, 4)), (4, 4), score=0.9)
    tie = record(np.ones((2, 2)), (0, 0), score=0.9)
    same_as_tie = record(np.ones((2, 2)), (1, 1), score=0.9)
    labels = ns.masks_to_labels([weak, strong, tie, same_as_tie], (10, 12), start=5)
    assert labels.dtype == np.uint32 and labels.shape == (10, 12)
    assert labels[3, 3] == labels[2, 5] == 5  # weak alone
    assert (labels[4:8, 4:8] == 6).all()  # strong over weak
    assert labels[2, 2] == 8  # same_as_tie over weak
    assert labels[1, 1] == 7  # tie and same_as_tie: equal scores, the earlier record wins
    assert labels[0, 0] == 7 and labels[1, 2] == 8 and labels[9, 11] == 0
    assert set(np.unique(labels)) == {0, 5, 6, 7, 8}


def test_masks_to_labels_of_generated_records(records, rgb):
    labels = ns.masks_to_labels(records, rgb.shape[:2], dtype=np.uint16)
    assert labels.dtype == np.uint16
    # Pixel by pixel: the label of the best-scoring record covering it (the first on ties).
    masks = np.stack([r.mask for r in records])  # (N, H, W)
    scores = np.array([r.score for r in records])[:, None, None]
    covered = masks.any(axis=0)
    expected = np.where(covered, np.argmax(np.where(masks, scores, -1.0), axis=0) + 1, 0)
    assert (labels == expected).all()
    assert covered.any() and len(np.unique(labels)) > 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(start=0), "start"),
        (dict(dtype=np.float32), "integer"),
        (dict(dtype=np.uint8, start=255), "uint8"),
        (dict(shape=(10, 13)), "shape"),
    ],
)
def test_masks_to_labels_refuses_bad_arguments(kwargs, match):
    records = [record(np.ones((2, 2)), (0, 0), 0.5), record(np.ones((2, 2)), (3, 3), 0.6)]
    shape = kwargs.pop("shape", (10, 12))
    with pytest.raises(ValueError, match=match):
        ns.masks_to_labels(records, shape, **kwargs)


# ------------------------------------------------------------------ building blocks
@pytest.mark.parametrize("seed", range(4))
def test_batched_nms_matches_torchvision(seed):
    gen = torch.Generator().manual_seed(seed)
    n = 300
    xy = torch.randint(0, 30, (n, 2), generator=gen)
    wh = torch.randint(0, 40, (n, 2), generator=gen)  # some empty boxes too
    boxes = torch.cat([xy, xy + wh], dim=1).float()
    scores = torch.randint(0, 20, (n,), generator=gen).float() / 20  # many ties
    categories = torch.randint(0, 3, (n,), generator=gen)
    kept = []
    for threshold in (0.3, 0.5, 0.7, 1.0):
        expected = torchvision_batched_nms(boxes, scores, categories, threshold)
        got = batched_nms(boxes, scores, categories, threshold)
        assert got.tolist() == expected.tolist()
        kept.append(len(got))
    assert kept[0] < kept[1] < kept[2] < n
    one_category = torch.zeros(n, dtype=torch.int64)
    expected = torchvision_batched_nms(boxes, scores, one_category, 0.5)
    assert batched_nms(boxes, scores, one_category, 0.5).tolist() == expected.tolist()


def test_mask_boxes_are_inclusive_and_zero_for_empty_masks():
    masks = torch.zeros(3, 6, 7, dtype=torch.bool)
    masks[0, 1:4, 2:6] = True
    masks[1, 5, 0] = True
    boxes = mask_boxes(masks)
    assert boxes.tolist() == [[2, 1, 5, 3], [0, 5, 0, 5], [0, 0, 0, 0]]


def test_crop_boxes_tile_the_image_with_overlap():
    crops = crop_boxes((100, 150), 2, 0.25)
    assert (crops[0].x0, crops[0].y0, crops[0].x1, crops[0].y1) == (0, 0, 150, 100)
    assert [c.layer for c in crops] == [0] + [1] * 4 + [2] * 16
    for layer in (1, 2):
        tiles = [c for c in crops if c.layer == layer]
        covered = np.zeros((100, 150), dtype=int)
        for c in tiles:
            covered[c.y0 : c.y1, c.x0 : c.x1] += 1
        assert covered.min() >= 1 and covered.max() > 1  # everything covered, with overlap


def test_the_options_defaults_are_written_once_in_the_generators_signature(monkeypatch):
    """automatic_options checks what it is given and has no default of its own; a check of some
    options (the command line's --auto) takes the others from the generator's signature, and so
    do the command line's defaults, so a default changed there is the one checked and used."""
    import inspect

    from napari_sam2.cli.parser import build_parser
    from napari_sam2.engine import automatic, automatic_options

    checked = inspect.signature(automatic_options.check_options).parameters
    assert len(checked) == 15 and all(p.default is p.empty for p in checked.values())
    generator = inspect.signature(ns.AutomaticMaskGenerator).parameters
    assert set(checked) <= set(generator)
    automatic.check_generator_options(points_per_side=64)  # 4,096 clicks: fine
    init = ns.AutomaticMaskGenerator.__init__
    defaults = dict(zip(list(generator)[1:], init.__defaults__, strict=True))
    defaults["crop_n_layers"] = 3  # a default of 3 crop layers: 64 per side is too many clicks
    defaults["points_per_side"], defaults["pred_iou_thresh"] = 24, 0.7
    monkeypatch.setattr(init, "__defaults__", tuple(defaults.values()))
    args = build_parser().parse_args(["segment", "s.tif", "--auto", "0", "-o", "o.tif"])
    assert (args.points_per_side, args.pred_iou_thresh) == (24, 0.7)
    segment = build_parser()._subparsers._group_actions[0].choices["segment"]
    assert "(default 24: 576 clicks)" in " ".join(segment.format_help().split())
    with pytest.raises(ValueError, match="crop_n_layers=3 .* more than the bound"):
        automatic.check_generator_options(points_per_side=64)
    with pytest.raises(TypeError, match="not an option of AutomaticMaskGenerator: point_per_side"):
        automatic.check_generator_options(point_per_side=64)
