"""Which frames a propagation visits, in which order: the passes of
:meth:`~napari_sam2.VideoTracker.propagate`, computed without a model (the command line checks
a range before it loads one)."""

from __future__ import annotations

from collections.abc import Callable

DIRECTIONS = ("forward", "backward", "both")


def plan_passes(
    direction: str,
    start: int | None,
    stop: int | None,
    num_frames: int,
    default_start: Callable[[bool], int],
) -> list[tuple[int, int, bool]]:
    """The (first, last, reverse) passes of a propagation over ``num_frames`` frames (see
    :meth:`VideoTracker.propagate`); ``default_start(reverse)`` is where a pass starts when
    ``start`` is None. ``start``/``stop`` must be valid frame indices. Raises ValueError for a
    direction that cannot go from start to stop."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if direction == "both":
        lo = 0 if start is None else start
        hi = num_frames - 1 if stop is None else stop
        if lo > hi:
            raise ValueError(f"start {lo} is after stop {hi}")
        fwd = max(lo, min(default_start(False), hi))
        bwd = min(hi, max(default_start(True), lo))
        return [(fwd, hi, False), (bwd, lo, True)]
    reverse = direction == "backward"
    first = default_start(reverse) if start is None else start
    last = (0 if reverse else num_frames - 1) if stop is None else stop
    if (first < last) if reverse else (first > last):
        raise ValueError(f"{direction} propagation cannot go from frame {first} to {last}")
    return [(first, last, reverse)]


def frames_in(passes: list[tuple[int, int, bool]]) -> int:
    """How many results the passes of :meth:`VideoTracker.plan` yield."""
    return sum(abs(last - first) + 1 for first, last, _ in passes)
