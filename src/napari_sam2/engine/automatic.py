"""Automatic mask generation ("segment everything"), as SAM 2's official generator does it.

A regular grid of single positive clicks covers the image; each click asks the decoder for
masks, and the pipeline keeps the good, distinct ones:

1. Crops. Layer 0 is the whole image; crop layer ``i >= 1`` cuts it into ``2**i x 2**i``
   overlapping tiles. Each crop is embedded once (the image encoder runs once per crop) and gets
   its own point grid, scaled down by ``crop_n_points_downscale_factor**i``.
2. Per batch of ``points_per_batch`` clicks: decode (one click per prompt, three hypotheses per
   click with ``multimask_output``), optionally refine each mask once by feeding its low-res
   logits back with the same click (``use_m2m``), optionally fill small holes and remove small
   specks in the low-res logits (``min_mask_region_area``), upsample to the crop, keep masks
   whose predicted IoU exceeds ``pred_iou_thresh`` and whose stability score reaches
   ``stability_score_thresh``, threshold, and drop masks that touch a crop edge that is not an
   image edge.
3. Box non-maximum suppression within each crop (by predicted IoU), then, when there are several
   crops, between crops (masks from smaller crops win).

The behaviour, order of operations and arithmetic follow ``sam2==1.1.0``'s
``SAM2AutomaticMaskGenerator`` so that the same weights give the same masks; the parity test in
``tests/parity/test_automatic_parity.py`` holds us to it. Two of its conventions are worth
knowing, and are kept internally (they decide which boxes suppress which):

- Its boxes are (x0, y0, x1, y1) with *inclusive* x1, y1; the box IoU of the suppression uses
  ``(x1 - x0) * (y1 - y0)`` as the area. :class:`MaskRecord` reports exclusive ends instead.
- ``min_mask_region_area`` is measured in pixels of the decoder's low-resolution mask grid
  (256 x 256 at the default 1024 input), not in image pixels: the official predictor fills holes
  and removes specks of at most that area in the low-res logits, before upsampling.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import DTypeLike

from ..model import SAM2Model
from ..model.mask_decoder import select_masks
from .automatic_options import OptionTypeError, check_options, grid_sides
from .mask_ops import (
    Crop,
    batched_nms,
    crop_boxes,
    fill_small_regions,
    mask_boxes,
    point_grid,
    stability_score,
    touches_inner_crop_edge,
)
from .preprocess import (
    DEFAULT_PERCENTILES,
    IntensityWindow,
    as_window,
    check_frame_layout,
    sample_window,
    to_model_input,
    to_rgb_unit,
)
from .tiles import TileGrid, check_tile_options, resolve_tiles, tile_geometry

MIN_IMAGE_SIDE = 8
LOGIT_CLAMP = 32.0  # low-res logits fed back for the m2m refinement are clamped, as official

Box = tuple[int, int, int, int]
ProgressCallback = Callable[[int, int], object]


@dataclass(frozen=True, eq=False)
class MaskRecord:
    """One mask found by :class:`AutomaticMaskGenerator`.

    box: (min_row, min_col, max_row, max_col) in image pixels, max exclusive, so that
        ``image[r0:r1, c0:c1]`` is the box. The official record's ``bbox`` (x, y, w, h) has
        inclusive ends: ``box == (y, x, y + h + 1, x + w + 1)``. An empty mask has box (0, 0, 0, 0).
    box_mask: (max_row - min_row, max_col - min_col) bool, the mask inside ``box``.
    image_shape: (H, W) of the image. ``mask`` builds the full (H, W) bool mask on each access.
    score: predicted IoU; stability: stability score; area: pixels in the mask.
    point: (row, col) of the click that made the mask, in image pixels (pass it to
        :meth:`ImagePredictor.predict` to get the mask again).
    crop_box: (min_row, min_col, max_row, max_col) of the crop it came from, max exclusive.
    """

    box_mask: np.ndarray
    box: Box
    image_shape: tuple[int, int]
    score: float
    stability: float
    point: tuple[float, float]
    area: int
    crop_box: Box

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool mask in the whole image."""
        full = np.zeros(self.image_shape, dtype=bool)
        r0, c0, r1, c1 = self.box
        full[r0:r1, c0:c1] = self.box_mask
        return full


@dataclass
class _Candidates:
    """Masks that passed the per-batch filters, one entry per mask (N of them).

    boxes: (N, 4) int64 (x0, y0, x1, y1), inclusive ends; scores, stability: (N,) float32;
    points: (N, 2) float64 (x, y); box_masks: N bool arrays, the mask inside its box.
    Coordinates are in the crop until :meth:`uncrop`.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    stability: torch.Tensor
    points: torch.Tensor
    box_masks: list[np.ndarray]
    crop: Crop | None = None

    @classmethod
    def empty(cls) -> _Candidates:
        return cls(
            torch.zeros(0, 4, dtype=torch.int64),
            torch.zeros(0),
            torch.zeros(0),
            torch.zeros(0, 2, dtype=torch.float64),
            [],
        )

    @classmethod
    def concat(cls, parts: Sequence[_Candidates]) -> _Candidates:
        if not parts:
            return cls.empty()
        return cls(
            torch.cat([p.boxes for p in parts]),
            torch.cat([p.scores for p in parts]),
            torch.cat([p.stability for p in parts]),
            torch.cat([p.points for p in parts]),
            [m for p in parts for m in p.box_masks],
        )

    def __len__(self) -> int:
        return len(self.box_masks)

    def take(self, index: torch.Tensor) -> _Candidates:
        idx = index.tolist()
        return _Candidates(
            self.boxes[index],
            self.scores[index],
            self.stability[index],
            self.points[index],
            [self.box_masks[i] for i in idx],
        )

    def uncrop(self, crop: Crop) -> _Candidates:
        offset = torch.tensor([crop.x0, crop.y0])
        return _Candidates(
            self.boxes + offset.repeat(2),
            self.scores,
            self.stability,
            self.points + offset,
            self.box_masks,
            crop,
        )


class AutomaticMaskGenerator:
    """Find every object in an image: SAM 2's automatic mask generator.

    Parameters (same names, meanings and defaults as the official ``SAM2AutomaticMaskGenerator``):

    - ``points_per_side``: clicks per side of the grid (``points_per_side**2`` in all).
    - ``points_per_batch``: clicks decoded together (memory versus speed).
    - ``pred_iou_thresh`` [0, 1]: keep masks whose predicted IoU is above it.
    - ``stability_score_thresh`` [0, 1]: keep masks whose stability score (IoU of the mask
      thresholded at ``mask_threshold +- stability_score_offset``) is at least this.
    - ``mask_threshold``: logit threshold of the masks.
    - ``box_nms_thresh``, ``crop_nms_thresh`` (0, 1]: box IoU above which the weaker of two masks
      is dropped, within a crop and between crops.
    - ``crop_n_layers`` >= 0, ``crop_overlap_ratio`` [0, 1), ``crop_n_points_downscale_factor``
      >= 1: the crop layers (see the module docstring).
    - ``min_mask_region_area`` >= 0: fill holes and remove specks up to this area, in low-res
      mask pixels (see the module docstring). 0 turns it off.
    - ``multimask_output``: three hypotheses per click (else one); ``use_m2m``: refine each mask
      once with its own logits as mask input.
    - ``channel``, ``percentiles``: how images other than 8-bit RGB are shown to the model, as in
      :class:`~napari_sam2.ImagePredictor`.
    - ``tiles`` (``True``, ``False`` or ``"auto"``: images whose longer side exceeds 1.5 times
      the model's input), ``tile``, ``halo``: segment a big image in native-resolution windows
      of ``tile`` pixels (default the model's input) overlapping by ``halo`` (default a
      quarter of the tile), and merge what they find (:mod:`.automatic_tiles`,
      docs/big-images.md). Not in the official generator.

    Raises ValueError naming the parameter and its allowed range.
    """

    def __init__(
        self,
        model: SAM2Model,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.8,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        min_mask_region_area: int = 0,
        multimask_output: bool = True,
        use_m2m: bool = False,
        channel: int = 0,
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
        tiles: bool | str = False,
        tile: int | None = None,
        halo: int | None = None,
    ) -> None:
        check_tile_options(tiles, tile, halo)
        check_options(
            points_per_side=points_per_side,
            points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            stability_score_offset=stability_score_offset,
            mask_threshold=mask_threshold,
            box_nms_thresh=box_nms_thresh,
            crop_n_layers=crop_n_layers,
            crop_nms_thresh=crop_nms_thresh,
            crop_overlap_ratio=crop_overlap_ratio,
            crop_n_points_downscale_factor=crop_n_points_downscale_factor,
            min_mask_region_area=min_mask_region_area,
            multimask_output=multimask_output,
            use_m2m=use_m2m,
            channel=channel,
        )
        self.model = model
        self.points_per_side = points_per_side
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = float(pred_iou_thresh)
        self.stability_score_thresh = float(stability_score_thresh)
        self.stability_score_offset = float(stability_score_offset)
        self.mask_threshold = float(mask_threshold)
        self.box_nms_thresh = float(box_nms_thresh)
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = float(crop_nms_thresh)
        self.crop_overlap_ratio = float(crop_overlap_ratio)
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.multimask_output = bool(multimask_output)
        self.use_m2m = bool(use_m2m)
        self.channel = channel
        self.percentiles = percentiles
        self.tiles = tiles
        self.tile, self.halo = tile_geometry(model.config.image_size, tile, halo)
        # Points per side of each crop layer; a layer's grid is built when its crop is reached.
        self._grid_sides = list(
            grid_sides(points_per_side, crop_n_layers, crop_n_points_downscale_factor)
        )

    @property
    def point_grids(self) -> list[np.ndarray]:
        """Each crop layer's (n², 2) grid of clicks (x, y) in [0, 1], as official."""
        return [point_grid(n) for n in self._grid_sides]

    @torch.inference_mode()
    def generate(
        self,
        image: np.ndarray,
        progress: ProgressCallback | None = None,
        window: IntensityWindow | None = None,
    ) -> list[MaskRecord]:
        """Masks of everything in ``image``: (H, W) or (H, W, C), any numeric dtype, as
        :meth:`ImagePredictor.set_image` accepts (``window`` maps non-8-bit intensities; without
        it, percentiles of the whole image are used, the same for every crop).

        ``progress(done, total)`` is called with 0 first, then after each batch of clicks
        (``total`` counts clicks over all crops). An exception raised by it stops the generation
        and propagates: that is how a caller cancels.

        Returns the records in the official order: with one crop, by decreasing predicted IoU;
        with crop layers, masks from smaller crops first, each crop's masks by decreasing
        predicted IoU (ties keep the order of the clicks, row by row, and of the hypotheses).

        Tiled (``tiles``; ``image`` may then be lazy: only one window is read at a time, and
        without ``window`` the percentiles come from a strided sample): the windows' records
        merged, by decreasing predicted IoU (:func:`~.automatic_tiles.merge_window_records`);
        ``total`` counts the clicks of every window, so progress and cancel work per batch.
        """
        if progress is not None and not callable(progress):
            raise OptionTypeError(
                f"progress must be a function progress(done, total) or None, got {progress!r} "
                f"({type(progress).__name__})"
            )
        if not (hasattr(image, "shape") and hasattr(image, "dtype")):
            image = np.asarray(image)
        shape = tuple(int(n) for n in image.shape)
        if len(shape) not in (2, 3) or 0 in shape:
            raise ValueError(
                f"image must be a non-empty (H, W) or (H, W, C) array, got shape {shape}"
            )
        height, width = shape[:2]
        if height < MIN_IMAGE_SIDE or width < MIN_IMAGE_SIDE:
            raise ValueError(
                f"image must be at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels, got "
                f"{height}x{width} (shape {shape}); if channels come first, move them last"
            )
        tiled = resolve_tiles(self.tiles, (height, width), self.model.config.image_size, self.tile)
        if tiled:
            grid = TileGrid((height, width), self.tile, self.halo)
            regions = grid.windows
            check_frame_layout(shape, image.dtype, self.channel)
            window = as_window(window)
            if window is None and np.dtype(image.dtype) not in (np.uint8, np.bool_):
                window = sample_window(image, self.channel, self.percentiles)
        else:
            image = np.asarray(image)
            rgb = to_rgb_unit(
                image, channel=self.channel, window=window, percentiles=self.percentiles
            )
            regions = [(0, 0, height, width)]
        r0, c0, r1, c1 = regions[0]
        crops = crop_boxes((r1 - r0, c1 - c0), self.crop_n_layers, self.crop_overlap_ratio)
        per_region = sum(self._grid_sides[c.layer] ** 2 for c in crops)
        counter = _Progress(progress, per_region * len(regions))
        counter.advance(0)
        if not tiled:
            return self._generate_rgb(rgb, crops, counter)

        from .automatic_tiles import merge_window_records

        found = []
        for r0, c0, r1, c1 in regions:
            pixels = np.asarray(image[r0:r1, c0:c1])
            rgb = to_rgb_unit(
                pixels, channel=self.channel, window=window, percentiles=self.percentiles
            )
            del pixels
            found.append(((r0, c0, r1, c1), self._generate_rgb(rgb, crops, counter)))
        return merge_window_records(found, grid, self.crop_nms_thresh)

    def _generate_rgb(self, rgb: np.ndarray, crops: list[Crop], counter) -> list[MaskRecord]:
        """The records of one (H, W, 3) image in [0, 1] (the whole image or one window)."""
        height, width = rgb.shape[:2]
        per_crop = [self._process_crop(rgb, crop, counter) for crop in crops]
        found = _Candidates.concat(per_crop)
        crop_of = [c.crop for c in per_crop for _ in range(len(c))]
        if len(crops) > 1 and len(found):
            # Prefer masks from smaller crops: score 1 / crop area, in float32 as official.
            areas = torch.tensor([(c.x1 - c.x0) * (c.y1 - c.y0) for c in crop_of])
            keep = batched_nms(
                found.boxes.float(),
                1 / areas,
                torch.zeros(len(found), dtype=torch.int64),
                self.crop_nms_thresh,
            )
            found = found.take(keep)
            crop_of = [crop_of[i] for i in keep.tolist()]
        return [_record(found, i, crop_of[i], (height, width)) for i in range(len(found))]

    # ---------------------------------------------------------------- one crop
    def _process_crop(self, rgb: np.ndarray, crop: Crop, counter: _Progress) -> _Candidates:
        model = self.model
        crop_rgb = rgb[crop.y0 : crop.y1, crop.x0 : crop.x1]
        crop_hw = crop_rgb.shape[:2]
        x = to_model_input(crop_rgb, image_size=model.config.image_size).to(model.device)
        embedding = model.encode_image(x)
        features = model.without_memory(embedding.features)  # (1, C, E, E)
        high_res = embedding.high_res

        # Clicks in crop pixels (x, y), float64 like the official generator.
        grid = point_grid(self._grid_sides[crop.layer])
        points = torch.from_numpy(grid * np.array(crop_hw[::-1]))
        parts = []
        for start in range(0, len(points), self.points_per_batch):
            batch = points[start : start + self.points_per_batch]
            parts.append(self._process_batch(features, high_res, batch, crop, rgb.shape[:2]))
            counter.advance(len(batch))
        found = _Candidates.concat(parts)
        if len(found):
            keep = batched_nms(
                found.boxes.float(),
                found.scores,
                torch.zeros(len(found), dtype=torch.int64),
                self.box_nms_thresh,
            )
            found = found.take(keep)
        return found.uncrop(crop)

    def _process_batch(self, features, high_res, points, crop: Crop, image_hw) -> _Candidates:
        """(B, 2) float64 clicks (x, y) in crop pixels -> the masks that pass the filters."""
        model = self.model
        crop_hw = (crop.y1 - crop.y0, crop.x1 - crop.x0)
        coords = self._model_coords(points, crop_hw)[:, None]  # (B, 1, 2)
        labels = torch.ones(coords.shape[:2], dtype=torch.int32, device=model.device)
        out = model.decode(features, high_res, coords, labels)
        low_res, scores = select_masks(out, self.multimask_output)  # (B, K, 4E, 4E), (B, K)
        k = low_res.shape[1]
        low_res = low_res.flatten(0, 1)[:, None]  # (BK, 1, 4E, 4E)
        scores = scores.flatten(0, 1)  # (BK,)
        points = points.repeat_interleave(k, dim=0)  # (BK, 2)

        if self.use_m2m:
            low_res, scores = self._refine(
                features, high_res, coords.repeat_interleave(k, 0), low_res
            )

        keep = torch.ones(len(scores), dtype=torch.bool, device=scores.device)
        if self.pred_iou_thresh > 0.0:
            keep = scores > self.pred_iou_thresh
        idx = keep.nonzero()[:, 0]
        masks, stability, kept = self._upsample_and_filter(low_res[idx], crop_hw)
        idx = idx[kept]

        boxes = mask_boxes(masks)  # (N, 4) inclusive, crop pixels
        inner = touches_inner_crop_edge(boxes, crop, image_hw)
        boxes, masks, stability, idx = boxes[~inner], masks[~inner], stability[~inner], idx[~inner]
        masks_np = masks.cpu().numpy()
        box_masks = [
            m[y0 : y1 + 1, x0 : x1 + 1].copy() if m.any() else m[:0, :0].copy()
            for m, (x0, y0, x1, y1) in zip(masks_np, boxes.tolist())
        ]
        return _Candidates(
            boxes.cpu(),
            scores[idx].float().cpu(),
            stability.float().cpu(),
            points[idx.cpu()],
            box_masks,
        )

    def _refine(self, features, high_res, coords, low_res):
        """One mask-to-mask step: each mask's clamped low-res logits (N, 1, 4E, 4E) go back in
        with its click, coords (N, 1, 2) in the model's frame (one mask out, dynamic fallback),
        in batches of ``points_per_batch`` as official."""
        model = self.model
        labels = torch.ones(coords.shape[:2], dtype=torch.int32, device=model.device)
        mask_input = low_res.clamp(-LOGIT_CLAMP, LOGIT_CLAMP)
        refined, ious = [], []
        for start in range(0, len(coords), self.points_per_batch):
            s = slice(start, start + self.points_per_batch)
            out = model.decode(features, high_res, coords[s], labels[s], mask_input[s])
            masks, scores = select_masks(out, multimask=False)  # (b, 1, 4E, 4E), (b, 1)
            refined.append(masks)
            ious.append(scores[:, 0])
        return torch.cat(refined), torch.cat(ious)

    def _upsample_and_filter(self, low_res: torch.Tensor, crop_hw, chunk: int = 16):
        """(N, 1, 4E, 4E) logits -> bool masks (M, h, w) at the crop's size that pass the
        stability filter, their stability (M,) and their indices (M,) into the N.
        Upsampled in chunks so that memory stays at a few full-size float masks."""
        if self.min_mask_region_area > 0 and len(low_res):
            low_res = fill_small_regions(low_res, self.min_mask_region_area)
        masks, stability, kept = [], [], []
        for start in range(0, len(low_res), chunk):
            logits = F.interpolate(
                low_res[start : start + chunk].float(),
                crop_hw,
                mode="bilinear",
                align_corners=False,
            )[:, 0]  # (n, h, w)
            score = stability_score(logits, self.mask_threshold, self.stability_score_offset)
            ok = torch.ones_like(score, dtype=torch.bool)
            if self.stability_score_thresh > 0.0:
                ok = score >= self.stability_score_thresh
            masks.append(logits[ok] > self.mask_threshold)
            stability.append(score[ok])
            kept.append(ok.nonzero()[:, 0] + start)
        if not masks:
            device = low_res.device
            return (
                torch.zeros(0, *crop_hw, dtype=torch.bool, device=device),
                torch.zeros(0, device=device),
                torch.zeros(0, dtype=torch.int64, device=device),
            )
        return torch.cat(masks), torch.cat(stability), torch.cat(kept)

    def _model_coords(self, points: torch.Tensor, crop_hw) -> torch.Tensor:
        """(N, 2) float64 (x, y) crop pixels -> the model's input frame, on the model's device.
        Same arithmetic as the official: divide by the crop's (w, h), multiply by the input
        size, all in float64 (MPS has no float64: float32 there)."""
        h, w = crop_hw
        coords = points / torch.tensor([w, h], dtype=torch.float64) * self.model.config.image_size
        device = self.model.device
        return coords.to(device, torch.float32 if device.type == "mps" else torch.float64)


def option_defaults() -> dict:
    """:class:`AutomaticMaskGenerator`'s options and their defaults, read from its signature
    (the one place they are written: the command line's defaults come from here)."""
    parameters = inspect.signature(AutomaticMaskGenerator).parameters.items()
    return {name: p.default for name, p in parameters if p.default is not p.empty}


def check_generator_options(**options) -> None:
    """Check some options of :class:`AutomaticMaskGenerator` before any model work (the
    command line's ``--auto``), the others at the generator's defaults — its signature is the
    one place they are written. ValueError as the generator raises it; TypeError for a name
    that is not one of its options."""
    checked = inspect.signature(check_options).parameters
    defaults = {k: v for k, v in option_defaults().items() if k in checked}
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"not an option of AutomaticMaskGenerator: {', '.join(unknown)}")
    check_options(**{**defaults, **options})


class _Progress:
    """Counts clicks done and reports them."""

    def __init__(self, callback: ProgressCallback | None, total: int) -> None:
        self.callback, self.total, self.done = callback, total, 0

    def advance(self, n: int) -> None:
        self.done += n
        if self.callback is not None:
            self.callback(self.done, self.total)


# -------------------------------------------------------------------- records and labels
def _record(found: _Candidates, i: int, crop: Crop, image_hw) -> MaskRecord:
    box_mask = found.box_masks[i]
    x0, y0, _, _ = found.boxes[i].tolist()
    if box_mask.size == 0:
        box = (0, 0, 0, 0)
    else:
        box = (y0, x0, y0 + box_mask.shape[0], x0 + box_mask.shape[1])
    x, y = found.points[i].tolist()
    return MaskRecord(
        box_mask=box_mask,
        box=box,
        image_shape=(int(image_hw[0]), int(image_hw[1])),
        score=float(found.scores[i]),
        stability=float(found.stability[i]),
        point=(y, x),
        area=int(box_mask.sum()),
        crop_box=(crop.y0, crop.x0, crop.y1, crop.x1),
    )


def masks_to_labels(
    records: Sequence[MaskRecord],
    shape: tuple[int, int],
    dtype: DTypeLike = np.uint32,
    start: int = 1,
) -> np.ndarray:
    """Paint records into an (H, W) label image: record ``i`` gets label ``start + i``, 0 is
    background. Where masks overlap, the higher predicted IoU (``score``) wins; on equal scores,
    the record that comes first.

    Raises ValueError if ``start < 1``, if ``dtype`` is not an integer type that holds every
    label, or if a record was made for an image of another shape.
    """
    shape = (int(shape[0]), int(shape[1]))
    dtype = np.dtype(dtype)
    if start < 1:
        raise ValueError(f"start must be at least 1 (0 is the background), got {start}")
    if not np.issubdtype(dtype, np.integer):
        raise ValueError(f"dtype must be an integer type, got {dtype}")
    last = start + len(records) - 1
    if records and last > np.iinfo(dtype).max:
        raise ValueError(
            f"dtype {dtype} holds labels up to {np.iinfo(dtype).max}, but {len(records)} records "
            f"starting at {start} need {last}; use a wider type such as np.uint32"
        )
    labels = np.zeros(shape, dtype=dtype)
    for i, record in enumerate(records):
        if tuple(record.image_shape) != shape:
            raise ValueError(
                f"record {i} was made for an image of shape {record.image_shape}, not {shape}"
            )
    # Paint from the weakest to the strongest, so that the strongest is painted last.
    order = sorted(range(len(records)), key=lambda i: (records[i].score, -i))
    for i in order:
        r0, c0, r1, c1 = records[i].box
        labels[r0:r1, c0:c1][records[i].box_mask] = start + i
    return labels
