"""One stack's segmentation as a job: planned and checked completely before the model loads,
then run. The command line calls these; they print nothing, parse no arguments and need no Qt.

    jobs = plan_jobs(stacks, prompts, output, fmt="tif", overwrite=False)
    checked = [check_job(job, options) for job in jobs]     # no model yet: fails fast
    model = load_model(...)
    result = run_job(model, checked[0], options, progress)  # tracks and writes the labels

Everything a user can get wrong is found by :func:`plan_jobs` and :func:`check_job`: missing
files, an output that is (or holds, or lies inside) an input, an existing output without
``overwrite``, folders that do not exist or cannot be written, prompts outside the stack, a
``start``/``stop`` outside it or against the direction, a ``channel`` the data do not have,
complex data, object ids no label dtype holds, and frames that cannot set an intensity window.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .engine.frames import FrameSource, FrameSourceError
from .engine.labels import LabelError, label_dtype_for
from .engine.preprocess import IntensityWindow, check_frame_layout
from .engine.video import frames_in, plan_passes
from .io import (
    InputError,
    ObjectPrompt,
    add_prompts,
    check_output,
    check_writable_folder,
    label_counts,
    label_output,
    open_stack,
    read_prompts,
    stack_stem,
)


@dataclass(frozen=True)
class SegmentOptions:
    """How every stack of a run is tracked (the ``segment`` command's options)."""

    direction: str = "both"
    axis: int | None = None
    index: int | None = None
    start: int | None = None
    stop: int | None = None
    image_size: int = 1024
    channel: int = 0
    overwrite: bool = False
    spill_dir: str | os.PathLike | None = None


@dataclass(frozen=True)
class SegmentJob:
    """One stack, the prompts file for it, and the label file it becomes."""

    stack: Path
    prompts: Path
    output: Path


@dataclass(frozen=True)
class CheckedJob:
    """A job whose inputs were all read and checked; what running it needs to know."""

    job: SegmentJob
    num_frames: int
    prompts: tuple[ObjectPrompt, ...]
    passes: tuple[tuple[int, int, bool], ...]
    label_shape: tuple[int, int, int]
    window: IntensityWindow | None

    @property
    def obj_ids(self) -> list[int]:
        return sorted({p.obj_id for p in self.prompts})

    @property
    def tracked_frames(self) -> list[int]:
        frames = {f for a, b, _ in self.passes for f in range(min(a, b), max(a, b) + 1)}
        return sorted(frames)


@dataclass(frozen=True)
class JobResult:
    """What a finished job did: per object id, (voxels, frames where it appears)."""

    job: SegmentJob
    num_frames: int
    obj_ids: list[int]
    tracked_frames: list[int]
    counts: dict[int, tuple[int, int]]
    seconds: float


def plan_jobs(
    stacks: list[Path],
    prompts: Path,
    output: Path,
    *,
    fmt: str = "tif",
    overwrite: bool = False,
    to_folder: bool | None = None,
) -> list[SegmentJob]:
    """Pair each stack with its prompts file and output path, and check the paths.

    ``prompts`` is one CSV for every stack, or a folder holding ``<stack name>.csv``.
    ``output`` is the label file of a single stack, or a folder (``<stack name>_labels.<fmt>``
    in it) for several; ``to_folder`` forces one or the other (default: a folder for several
    stacks or an existing folder not named .zarr). Nothing is created."""
    for s in stacks:
        if not s.exists():
            raise InputError(f"stack not found: {s}")
    if not prompts.exists():
        raise InputError(f"prompts file not found: {prompts}")
    if to_folder is None:
        to_folder = len(stacks) > 1 or (output.is_dir() and output.suffix.lower() != ".zarr")
    if to_folder:
        check_writable_folder(output, what="output folder", create=True)
    jobs = []
    seen: dict[Path, Path] = {}
    for stack in stacks:
        stem = stack_stem(stack)
        csv = prompts / f"{stem}.csv" if prompts.is_dir() else prompts
        if not csv.is_file():
            raise InputError(f"no prompts for {stack}: {csv} not found")
        target = output / f"{stem}_labels.{fmt}" if to_folder else output
        if target in seen:
            raise InputError(
                f"{seen[target]} and {stack} would both write {target}; give stacks distinct names"
            )
        seen[target] = stack
        check_output(
            target,
            stacks,
            overwrite=overwrite,
            read_only=[prompts],
            folder_exists=not (to_folder and not output.exists()),
        )
        jobs.append(SegmentJob(stack, csv, target))
    return jobs


def check_job(job: SegmentJob, options: SegmentOptions) -> CheckedJob:
    """Read and check everything of ``job`` that can be checked without the model: the stack
    (shape, dtype, channel), the prompts against it, the propagation range, the label dtype,
    and the stack's intensity window (read from up to 8 frames, reused by :func:`run_job`)."""
    if options.spill_dir is not None:
        check_writable_folder(options.spill_dir, what="--spill-dir")
    stack = open_stack(job.stack, axis=options.axis, index=options.index)
    try:
        where = f"{job.stack}"
        try:
            check_frame_layout(stack.frames.shape[1:], stack.frames.dtype, options.channel)
        except ValueError as e:
            raise InputError(f"{where}: {e}") from None
        prompts = read_prompts(job.prompts, stack)
        n = stack.num_frames
        for name, value in (("--start", options.start), ("--stop", options.stop)):
            if value is not None and not 0 <= value < n:
                raise InputError(
                    f"{where}: {name} {value} is out of range: the stack has {n} frames "
                    f"(0..{n - 1})"
                )
        frames = [p.frame for p in prompts]
        try:
            passes = plan_passes(
                options.direction,
                options.start,
                options.stop,
                n,
                lambda reverse: max(frames) if reverse else min(frames),
            )
        except ValueError as e:
            raise InputError(f"{where}: {e}") from None
        try:
            label_dtype_for(max(p.obj_id for p in prompts))
        except LabelError as e:
            raise InputError(f"{job.prompts}: {e}") from None
        try:
            source = FrameSource(
                stack.frames, image_size=options.image_size, channel=options.channel
            )
        except FrameSourceError as e:
            raise InputError(f"{where}: {e}") from None
        return CheckedJob(job, n, tuple(prompts), tuple(passes), stack.label_shape, source.window)
    finally:
        stack.close()


def run_job(
    model,
    checked: CheckedJob,
    options: SegmentOptions,
    progress: Callable[[int, int], None] | None = None,
) -> JobResult:
    """Track one checked stack into its label file (written under a temporary name, renamed
    when complete). ``progress(done, total)`` after each frame."""
    from .engine.labels import track_to_labels
    from .engine.video import VideoTracker

    started = time.perf_counter()
    job = checked.job
    stack = open_stack(job.stack, axis=options.axis, index=options.index)
    tracker = None
    try:
        tracker = VideoTracker(
            model,
            stack.frames,
            channel=options.channel,
            window=checked.window,
            spill_dir=options.spill_dir,
        )
        add_prompts(tracker, checked.prompts, job.prompts)
        obj_ids = checked.obj_ids
        total = frames_in(list(checked.passes))
        dtype = label_dtype_for(max(obj_ids))
        with label_output(
            job.output, checked.label_shape, dtype, overwrite=options.overwrite
        ) as labels:
            track_to_labels(
                tracker,
                labels,
                direction=options.direction,
                start=options.start,
                stop=options.stop,
                progress=None if progress is None else lambda done, _: progress(done, total),
            )
            counts = label_counts(labels, obj_ids)
    finally:
        if tracker is not None:
            tracker.close()
        stack.close()
    return JobResult(
        job,
        checked.num_frames,
        obj_ids,
        checked.tracked_frames,
        counts,
        time.perf_counter() - started,
    )
