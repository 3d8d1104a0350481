"""Running here: a checked job tracked into its label file (:func:`run_job`), and a batch of
checked jobs run one after another in this process (:func:`run_here`). The command line, the
widget-free API (:func:`~napari_sam2.segment_many`) and the Dask tasks all run the same
:func:`run_job`, so the labels are identical.

    checked = [check_job(job, options) for job in jobs]     # .plan: no model yet
    model = load_model(...)
    result = run_job(model, checked[0], options, progress)  # tracks and writes the labels
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..engine.labels import label_dtype_for
from ..engine.video import frames_in
from ..io import (
    InputError,
    add_prompts,
    discard_partial,
    label_counts,
    label_output,
    open_stack,
    stack_stem,
)
from .plan import CheckedJob, JobResult, SegmentOptions, tracking_tiles


def run_job(
    model,
    checked: CheckedJob,
    options: SegmentOptions,
    progress: Callable[[int, int], None] | None = None,
) -> JobResult:
    """Track one checked stack into its label file (written under a temporary name, renamed
    when complete). ``progress(done, total)`` after each frame."""
    from ..engine.labels import track_to_labels

    started = time.perf_counter()
    job = checked.job
    with tracking(model, job.stack, options, job.embeddings, checked.window) as (stack, tracker):
        dropped = prompt_tracker(model, stack, tracker, checked, options)
        if not tracker.obj_ids:
            raise nothing_to_track(checked, options)
        obj_ids = sorted(tracker.obj_ids)
        total = frames_in(list(checked.passes))
        lineage = lineage_arguments(model, options)
        with job_output(checked, options, obj_ids, bool(lineage)) as labels:
            track_to_labels(
                tracker,
                labels,
                direction=options.direction,
                start=options.start,
                stop=options.stop,
                progress=None if progress is None else lambda done, _: progress(done, total),
                **lineage,
            )
            tracked = checked.tracked_frames
            if lineage:  # label values are track ids
                obj_ids = sorted({t.id for t in tracker.lineage} | set(obj_ids))
            counts = label_counts(labels, obj_ids, tracked)  # the other frames are 0
            write_lineage_outputs(labels, stack, tracker, checked, options)
    return JobResult(
        job,
        checked.num_frames,
        obj_ids,
        tracked,
        counts,
        time.perf_counter() - started,
        tuple(dropped),
    )


def nothing_to_track(checked: CheckedJob, options: SegmentOptions) -> InputError:
    """The error of a job whose every object the model's input size loses."""
    return InputError(
        f"{checked.job.prompts}: every object is too small for the model's input size "
        f"({options.image_size}); use a larger --image-size"
    )


def lineage_arguments(model, options: SegmentOptions) -> dict:
    """``track_to_labels``' new-objects and divisions arguments of the options (none: {})."""
    if options.new_objects is None and not options.divisions:
        return {}
    from ..engine.automatic import AutomaticMaskGenerator
    from ..engine.lineage import LineageOptions

    finder = AutomaticMaskGenerator(model, channel=options.channel, **options.auto)
    return {
        "new_objects": options.new_objects,
        "divisions": options.divisions,
        "lineage_options": LineageOptions(finder=finder),
    }


def write_lineage_outputs(labels, stack, tracker, checked: CheckedJob, options) -> None:
    """The CTC folder (``--format ctc``: the job's output) and the tracks file, from the
    finished labels and the tracker's lineage."""
    from ..io.tracks import parents_of, write_ctc, write_tracks

    parents = parents_of(tracker.lineage)
    if checked.job.ctc:
        write_ctc(labels, checked.job.output, parents, overwrite=options.overwrite)
    if options.tracks is not None:
        write_tracks(labels, options.tracks, stack.frames, parents, options.channel, True)


def job_output(checked: CheckedJob, options: SegmentOptions, obj_ids, lineage: bool = False):
    """The job's label volume (a context: :func:`~napari_sam2.io.label_output`), of the dtype
    that ``obj_ids`` need (new ids to come with a ``lineage``), with the stack's geometry; in
    memory for a CTC output (written as CTC files at the end)."""
    most = max(obj_ids) + (60000 if lineage else 0)
    if checked.job.ctc:
        from ..engine.labels import new_labels

        return contextlib.nullcontext(new_labels(checked.label_shape, label_dtype_for(most)))
    return label_output(
        checked.job.output,
        checked.label_shape,
        label_dtype_for(most),
        overwrite=options.overwrite,
        geometry=checked.geometry,
        source=label_source(checked),
        fixed=dict(checked.fixed_axes),
    )


def label_source(checked: CheckedJob) -> str:
    """Where a job's objects come from, as its OME-Zarr labels' ``properties`` say."""
    if checked.automatic or checked.job.prompts is None:  # (None: found by a first task)
        return f"napari-sam2 segment everything on frame {checked.prompt_frame}"
    return f"napari-sam2 prompts {checked.job.prompts.name}"


def prompt_tracker(
    model, stack, tracker, checked: CheckedJob, options: SegmentOptions, obj_ids=None
):
    """Give the job's prompts to ``tracker`` (only those of ``obj_ids`` when given): its clicks
    and boxes, its label image, or what SAM 2 finds on its frame. Returns the ids of a label
    image too small for the model's input."""
    if checked.prompts:
        prompts = checked.prompts
        if obj_ids is not None:
            prompts = tuple(p for p in prompts if p.obj_id in set(obj_ids))
        add_prompts(tracker, prompts, checked.job.prompts)
        return ()
    labels = checked.label_prompt
    if labels is None:
        labels = segment_everything(model, stack, checked, options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dropped ids are in the result instead
        return tuple(tracker.add_labels(checked.prompt_frame, labels, obj_ids=obj_ids).dropped)


def segment_everything(model, stack, checked: CheckedJob, options: SegmentOptions) -> np.ndarray:
    """The label image of everything SAM 2 finds on the job's ``prompt_frame`` (ids 1..N by
    decreasing predicted IoU), seen with the stack's channel and intensity window. A frame
    larger than 1.5 times the model's input is segmented in native-resolution windows
    (``tiles="auto"``, docs/big-images.md)."""
    from ..engine.automatic import AutomaticMaskGenerator, masks_to_labels

    auto = {"tiles": "auto", **options.auto}
    generator = AutomaticMaskGenerator(model, channel=options.channel, **auto)
    frame = np.asarray(stack.frames[checked.prompt_frame])
    records = generator.generate(frame, window=checked.window)
    if not records:
        raise InputError(
            f"{checked.job.stack}: automatic segmentation found no object on frame "
            f"{checked.prompt_frame}; lower --pred-iou-thresh / --stability-score-thresh, or "
            "give prompts"
        )
    dtype = label_dtype_for(len(records))
    return masks_to_labels(records, checked.label_shape[1:], dtype=dtype)


def embed_stack(model, stack_path: Path, store: Path, options: SegmentOptions, progress=None):
    """Compute every frame's embedding of a stack into ``store`` (frames already there are
    skipped); returns (frames encoded, frames in the stack). Whole frames: the windows a
    tracking run needs depend on its prompts, and are kept in the store as it runs."""
    whole = dataclasses.replace(options, tiles="off")
    with tracking(model, stack_path, whole, store) as (stack, tracker):
        return tracker.precompute(progress=progress), stack.num_frames


@contextlib.contextmanager
def tracking(model, stack_path: Path, options: SegmentOptions, embeddings=None, window=None):
    """(stack, tracker) of a stack on disk, both closed (files, threads, temporary stores)
    however the block ends. Frames larger than 1.5 times the model's input are tracked in
    windows (``options.tiles``, :func:`.plan.tracking_tiles`; docs/big-images.md)."""
    from ..engine.window_tracking import make_tracker

    stack = open_stack(stack_path, axis=options.axis, index=options.index)
    tracker = None
    try:
        tracker = make_tracker(
            model,
            stack.frames,
            tracking_tiles(options),
            channel=options.channel,
            window=window,
            spill_dir=options.spill_dir,
            embeddings=embeddings,
            embeddings_dtype=options.embeddings_dtype,
        )
        yield stack, tracker
    finally:
        if tracker is not None:
            tracker.close()
        stack.close()


def run_here(
    model,
    checked: list[CheckedJob],
    options: SegmentOptions,
    *,
    on_start: Callable[[int, CheckedJob], Callable[[int, int], None] | None] | None = None,
    on_done: Callable[[JobResult], None] | None = None,
    on_failed: Callable[[Path, str], None] | None = None,
    keep_going: bool = True,
) -> tuple[dict[Path, JobResult], dict[Path, str]]:
    """Run checked jobs one after another in this process. ``on_start(i, job)`` may return a
    frame-progress callback. A job that raises is recorded and the next one starts
    (``keep_going``; else the error propagates); Ctrl+C and SIGTERM always stop the batch."""
    done, failed = {}, {}
    for i, job in enumerate(checked):
        progress = on_start(i, job) if on_start is not None else None
        try:
            result = run_job(model, job, options, progress)
        except Exception as e:
            if not keep_going:
                raise
            failed[job.job.stack] = describe(e)
            if on_failed is not None:
                on_failed(job.job.stack, failed[job.job.stack])
            continue
        done[job.job.stack] = result
        if on_done is not None:
            on_done(result)
    return done, failed


def discard_partials(jobs: Iterable[CheckedJob]) -> None:
    """Remove the temporary outputs of stopped jobs (a task already running on a worker cannot
    be interrupted: if it still finishes, its output is complete, or it fails to rename)."""
    for job in jobs:
        try:
            discard_partial(job.job.output)
        except OSError:
            pass


def describe(error: BaseException) -> str:
    """A one-line account of why a stack failed."""
    name = type(error).__name__
    if name == "KilledWorker":
        return (
            "the workers running it died (out of memory? give workers more memory or fewer "
            f"threads): {error}"
        )
    if isinstance(error, InputError):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        where = f" ({error.filename})" if error.filename else ""
        return f"I/O error{where}: {error.strerror}"
    return f"{name}: {error}"


class FrameBars:
    """A tqdm bar over the frames of each stack run here, one after another."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar = None

    def start(self, i: int, job: CheckedJob) -> Callable[[int, int], None]:
        from tqdm.auto import tqdm

        self.close()
        total = frames_in(list(job.passes))
        self.bar = tqdm(
            total=total, desc=stack_stem(job.job.stack), unit="frame", disable=not self.enabled
        )
        return lambda done, _total: self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
