"""The checks of :class:`~napari_sam2.engine.automatic.AutomaticMaskGenerator`'s options, made
before any model work: types (a flag is a real bool, a count a real integer), ranges, and a bound
on the clicks an image costs, so that a typo (``points_per_side=10**6``) is refused at once
instead of allocating until the machine runs out of memory."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

# The most clicks one image may cost, over all crops: 512 per side without crop layers, or 32 per
# side with 3 crop layers (87,040). Each click is decoded (three masks upsampled to the crop);
# beyond this a run takes hours and its grids alone take memory that grows as the square of
# points_per_side.
MAX_CLICKS = 2**18


class OptionTypeError(TypeError, ValueError):
    """An option of the wrong type (a string for a flag, a float for a count). Both a
    TypeError and a ValueError, so that ``except ValueError`` catches every bad option."""


def check_options(
    *,
    points_per_side: int,
    points_per_batch: int,
    pred_iou_thresh: float,
    stability_score_thresh: float,
    stability_score_offset: float,
    mask_threshold: float,
    box_nms_thresh: float,
    crop_n_layers: int,
    crop_nms_thresh: float,
    crop_overlap_ratio: float,
    crop_n_points_downscale_factor: int,
    min_mask_region_area: int,
    multimask_output: bool,
    use_m2m: bool,
    channel: int,
) -> None:
    """Raise ValueError (:class:`OptionTypeError`, also a TypeError, for a value of the wrong
    type), naming the parameter, what was given and what is accepted, for an option of
    :class:`AutomaticMaskGenerator` that cannot work (checked without a model). Refuses grids of
    more than :data:`MAX_CLICKS` clicks over all crops. Every option is given: the defaults are
    the generator's signature alone (:func:`~.automatic.check_generator_options` checks some
    options with the others at those defaults)."""
    _check_int("points_per_side", points_per_side, 1)
    _check_int("points_per_batch", points_per_batch, 1)
    _check_int("crop_n_layers", crop_n_layers, 0)
    _check_int("crop_n_points_downscale_factor", crop_n_points_downscale_factor, 1)
    _check_int("min_mask_region_area", min_mask_region_area, 0)
    _check_int("channel", channel, 0)
    _check_bool("multimask_output", multimask_output)
    _check_bool("use_m2m", use_m2m)
    _check_unit("pred_iou_thresh", pred_iou_thresh, low_open=False)
    _check_unit("stability_score_thresh", stability_score_thresh, low_open=False)
    _check_unit("box_nms_thresh", box_nms_thresh, low_open=True)
    _check_unit("crop_nms_thresh", crop_nms_thresh, low_open=True)
    _check_number("crop_overlap_ratio", crop_overlap_ratio)
    if not 0.0 <= crop_overlap_ratio < 1.0:
        raise ValueError(f"crop_overlap_ratio must be in [0, 1), got {crop_overlap_ratio!r}")
    _check_number("stability_score_offset", stability_score_offset)
    if not (math.isfinite(stability_score_offset) and stability_score_offset >= 0):
        raise ValueError(
            f"stability_score_offset must be a finite number >= 0, got {stability_score_offset!r}"
        )
    _check_number("mask_threshold", mask_threshold)
    if not math.isfinite(mask_threshold):
        raise ValueError(f"mask_threshold must be a finite number, got {mask_threshold!r}")
    total = 0
    for layer, side in enumerate(
        grid_sides(points_per_side, crop_n_layers, crop_n_points_downscale_factor)
    ):
        if side < 1:
            raise ValueError(
                f"crop_n_points_downscale_factor={crop_n_points_downscale_factor} leaves no point "
                f"in crop layer {layer} (points_per_side={points_per_side}); it must be at most "
                f"points_per_side ** (1 / crop_n_layers)"
            )
        total += 4**layer * side**2  # layer i has 2**i x 2**i crops
        if total > MAX_CLICKS:
            raise ValueError(
                f"points_per_side={points_per_side}, crop_n_layers={crop_n_layers} and "
                f"crop_n_points_downscale_factor={crop_n_points_downscale_factor} make at least "
                f"{total:,} clicks per image, more than the bound of {MAX_CLICKS:,}; use fewer "
                "points per side (512 without crop layers is the most), fewer "
                "crop layers or a larger downscale factor"
            )


def grid_sides(points_per_side: int, crop_n_layers: int, downscale: int) -> Iterator[int]:
    """Points per side of each crop layer's grid, as official: ``int(points_per_side /
    downscale**i)`` for layer i (computed one layer at a time, so that a huge ``crop_n_layers``
    costs nothing until it is refused)."""
    scale = 1
    for _ in range(int(crop_n_layers) + 1):
        yield int(points_per_side / scale) if scale <= points_per_side else 0
        scale *= int(downscale)


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise OptionTypeError(
            f"{name} must be an integer >= {minimum} (int or numpy integer), got {value!r} "
            f"({type(value).__name__})"
        )
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_bool(name: str, value) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise OptionTypeError(
            f"{name} must be True or False, got {value!r} ({type(value).__name__}); a string "
            "such as 'no' is not read as a flag"
        )


def _check_number(name: str, value) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise OptionTypeError(
            f"{name} must be a number (int or float), got {value!r} ({type(value).__name__})"
        )
    if isinstance(value, np.complexfloating):
        raise OptionTypeError(f"{name} must be a real number, got {value!r}")


def _check_unit(name: str, value, low_open: bool) -> None:
    _check_number(name, value)
    if not (0.0 < value <= 1.0 if low_open else 0.0 <= value <= 1.0):
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
