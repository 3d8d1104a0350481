"""What every command shares: exit codes, the program name, messages on stderr, the summary
printed per stack segmented (here or on a cluster)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from .. import weights

if TYPE_CHECKING:
    from ..batch.plan import JobResult

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_INPUT = 2
EXIT_WEIGHTS = 3
EXIT_FAILED = 4  # some stacks of a batch failed while running; the others were written
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what shells report for a job ended by `kill`

PROG = "napari-sam2"


class WeightsUnavailable(weights.WeightsError):
    """A --checkpoint that does not exist."""


def log(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, file=sys.stderr)


def print_summary(result: JobResult) -> None:
    tracked, elapsed = result.tracked_frames, result.seconds
    frames = f"{len(tracked)} frames ({tracked[0]}-{tracked[-1]})" if tracked else "0 frames"
    print(
        f"{result.job.stack} -> {result.job.output}: {len(result.obj_ids)} objects, {frames} of "
        f"{result.num_frames}, {elapsed:.1f} s ({elapsed / max(1, len(tracked)):.2f} s/frame)"
    )
    print(f"  {'object':>8} {'voxels':>12} {'frames':>7}")
    for obj_id in result.obj_ids:
        n, f = result.counts.get(obj_id, (0, 0))
        print(f"  {obj_id:>8} {n:>12,} {f:>7}" + ("  (not found)" if n == 0 else ""))
    if result.dropped:
        print(
            f"  not tracked: object(s) {list(result.dropped)} of the label image are too small "
            "for the model's input size (use a larger --image-size, or click them)"
        )
