"""One stack's objects tracked by several tasks, then merged into its label volume exactly as
one task tracking all of them writes it.

A stack with hundreds of objects (segment everything, a Cellpose segmentation as prompts) is
one long task; on a cluster its objects can be split into groups instead, one task each:

1. with automatic segmentation, a first task finds the objects (:func:`automatic_labels`);
2. each group's task tracks its objects alone (:func:`track_group`) and keeps, per frame, its
   labels and the winning logit of each labelled pixel, in a zarr store beside the output;
3. a last task merges the groups frame by frame (:func:`merge_groups`): the highest logit wins,
   ties go to the earlier group, which is how one tracker of all objects resolves overlaps, and
   writes the output (under its final name only when complete).

SAM 2 tracks each object from its own prompts and memory; objects meet only where their masks
overlap, in the label volume. So the merge equals one task's labels bit for bit where each
object is computed alone (``object_batch=1``: the CPU default at 1024² input or with one thread,
as on dask workers; batches — on a GPU, or at small inputs with several threads — may differ
in the logits' last bits). Groups need a common plan of frames: a stack is split only when all
its prompts lie on one frame (a label image, automatic segmentation, or clicks on one frame).
Each group runs the image encoder on every frame again: splitting pays off when the objects,
not the frames, are the work.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass

import numpy as np

from ..engine.labels import label_dtype_for, merge_resolved, resolve_frame
from ..engine.video import frames_in
from ..io import label_counts, open_stack, pieces_folder
from .plan import CheckedJob, JobResult, SegmentOptions
from .run import job_output, nothing_to_track, prompt_tracker, segment_everything, tracking


@dataclass(frozen=True)
class GroupResult:
    """What a group's task tracked (ids a label image held but the model's input size lost
    are ``dropped``)."""

    index: int
    obj_ids: tuple[int, ...]
    dropped: tuple[int, ...]
    seconds: float


def splittable(checked: CheckedJob, objects_per_task: int | None) -> bool:
    """Whether to split the job's objects into groups of ``objects_per_task``: it has more
    objects than that (automatic segmentation: perhaps, known once it ran), all prompted on one
    frame, and no embeddings store the groups would all write to."""
    if not objects_per_task or checked.job.embeddings is not None:
        return False
    if len(checked.prompt_frames) != 1:
        return False
    return checked.automatic or len(checked.obj_ids) > objects_per_task


def groups(checked: CheckedJob, objects_per_task: int) -> list[tuple[int, ...]]:
    """The job's object ids in tracker order, ``objects_per_task`` per group."""
    order = checked.object_order
    return [tuple(order[i : i + objects_per_task]) for i in range(0, len(order), objects_per_task)]


def automatic_labels(model, checked: CheckedJob, options: SegmentOptions) -> np.ndarray:
    """The label image of everything SAM 2 finds on the job's frame: what a single task would
    track from."""
    stack = open_stack(checked.job.stack, axis=options.axis, index=options.index)
    try:
        return segment_everything(model, stack, checked, options)
    finally:
        stack.close()


def track_group(
    model,
    checked: CheckedJob,
    options: SegmentOptions,
    obj_ids: tuple[int, ...],
    index: int,
    progress=None,
) -> GroupResult:
    """Track the objects ``obj_ids`` of a job alone into ``<pieces folder>/<index>``: per
    frame, their labels and the winning logit of each labelled pixel (0 elsewhere)."""
    import zarr

    started = time.perf_counter()
    job = checked.job
    target = pieces_folder(job.output) / str(index)
    partial = target.with_name(f"{index}.partial")
    with tracking(model, job.stack, options, None, checked.window) as (stack, tracker):
        dropped = prompt_tracker(model, stack, tracker, checked, options, obj_ids=list(obj_ids))
        tracked = tuple(tracker.obj_ids)
        if tracked:
            shape = checked.label_shape
            partial.parent.mkdir(parents=True, exist_ok=True)
            store = zarr.open_group(str(partial), mode="w")
            chunks = (1, *shape[1:])
            dtype = label_dtype_for(max(tracked))
            labels = store.create_array("labels", shape=shape, chunks=chunks, dtype=dtype)
            best = store.create_array("best", shape=shape, chunks=chunks, dtype=np.float32)
            total = frames_in(list(checked.passes))
            propagation = tracker.propagate(options.direction, options.start, options.stop)
            for done, result in enumerate(propagation, start=1):
                labels[result.frame], best[result.frame] = resolve_frame(result, dtype)
                if progress is not None:
                    progress(done, total)
            if target.exists():  # a rerun of this task (its worker died after the rename)
                shutil.rmtree(target)
            os.replace(partial, target)
    return GroupResult(index, tracked, tuple(dropped), time.perf_counter() - started)


def merge_groups(
    checked: CheckedJob, options: SegmentOptions, results: list[GroupResult]
) -> JobResult:
    """The job's label volume from its groups' pieces, written under its final name only when
    complete; the pieces are removed."""
    import zarr

    started = time.perf_counter()
    job = checked.job
    folder = pieces_folder(job.output)
    tracked = sorted((r for r in results if r.obj_ids), key=lambda r: r.index)
    if not tracked:
        shutil.rmtree(folder, ignore_errors=True)
        raise nothing_to_track(checked, options)
    obj_ids = sorted(i for r in tracked for i in r.obj_ids)
    dtype = label_dtype_for(max(obj_ids))
    pieces = [zarr.open_group(str(folder / str(r.index)), mode="r") for r in tracked]
    frames = checked.tracked_frames  # the others stay 0: never read nor written
    with job_output(checked, options, obj_ids) as labels:
        for t in frames:
            parts = [
                (np.asarray(p["labels"][t]).astype(dtype), np.asarray(p["best"][t])) for p in pieces
            ]
            labels[t] = merge_resolved(parts)
        counts = label_counts(labels, obj_ids, frames)
    shutil.rmtree(folder, ignore_errors=True)
    seconds = max(r.seconds for r in results) + time.perf_counter() - started
    dropped = tuple(sorted(i for r in results for i in r.dropped))
    return JobResult(job, checked.num_frames, obj_ids, frames, counts, seconds, dropped)


__all__ = [
    "GroupResult",
    "automatic_labels",
    "groups",
    "merge_groups",
    "splittable",
    "track_group",
]
