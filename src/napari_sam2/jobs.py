"""One stack's segmentation as a job: planned and checked completely before the model loads,
then run. The command line calls these; they print nothing, parse no arguments and need no Qt.

    jobs = plan_jobs(stacks, prompts, output, fmt="tif", overwrite=False)
    checked = [check_job(job, options) for job in jobs]     # no model yet: fails fast
    model = load_model(...)
    result = run_job(model, checked[0], options, progress)  # tracks and writes the labels

Prompts are a CSV of clicks and boxes, a label image whose objects all become mask prompts on
one frame (``SegmentOptions.prompt_frame``), or none: then SAM 2 segments everything on
``SegmentOptions.auto_frame`` and tracks every object it finds.

Everything a user can get wrong is found by :func:`plan_jobs` and :func:`check_job`: missing
files, an output that is (or holds, or lies inside) a stack or an embeddings store, or is (or
holds) the prompts or the spill folder, an existing output without ``overwrite``, a TIFF output
that would be mostly zeros (a short range of a long stack: zarr stores only what is tracked),
folders that do not exist or cannot be written, prompts outside the stack, a ``start``/``stop``
outside it or against the direction, a ``channel`` the data do not have, complex data, object
ids no label dtype holds, and frames that cannot set an intensity window.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .engine.frames import FrameSource, FrameSourceError
from .engine.labels import LabelError, label_dtype_for
from .engine.preprocess import IntensityWindow, check_frame_layout
from .engine.video import frames_in, plan_passes
from .io import (
    LABEL_PROMPT_SUFFIXES,
    InputError,
    ObjectPrompt,
    add_prompts,
    check_output,
    check_writable_folder,
    is_zarr_output,
    label_counts,
    label_output,
    open_stack,
    read_label_prompt,
    read_prompts,
    stack_stem,
)
from .io.ome import Geometry


@dataclass(frozen=True)
class SegmentOptions:
    """How every stack of a run is tracked (the ``segment`` command's options).

    ``prompt_frame``: the frame a label-image prompts file belongs to. ``auto_frame``: segment
    everything on this frame (no prompts file); ``auto``: options of the
    :class:`~napari_sam2.AutomaticMaskGenerator` for it."""

    direction: str = "both"
    axis: int | None = None
    index: int | None = None
    start: int | None = None
    stop: int | None = None
    image_size: int = 1024
    channel: int = 0
    overwrite: bool = False
    spill_dir: str | os.PathLike | None = None
    prompt_frame: int = 0
    auto_frame: int | None = None
    auto: dict = field(default_factory=dict)
    embeddings_dtype: str | None = None  # of new stores (None: see engine.embeddings.store_for)
    model: str | None = None  # name, to check an embeddings store before the model loads
    new_objects: int | None = None  # segment everything every N frames for new objects
    divisions: bool = False  # follow dividing cells (forward)
    tracks: Path | None = None  # a .csv or .geff of the tracks (one stack)


@dataclass(frozen=True)
class SegmentJob:
    """One stack, its prompts (a CSV file, a label image, or None: segment everything), and
    the label file it becomes."""

    stack: Path
    prompts: Path | None
    output: Path
    embeddings: Path | None = None  # a store kept on disk (else a temporary one)
    ctc: bool = False  # the output is a Cell Tracking Challenge folder (fmt "ctc")

    @property
    def label_image_prompts(self) -> bool:
        return self.prompts is not None and self.prompts.suffix.lower() in LABEL_PROMPT_SUFFIXES


@dataclass(frozen=True)
class CheckedJob:
    """A job whose inputs were all read and checked; what running it needs to know."""

    job: SegmentJob
    num_frames: int
    passes: tuple[tuple[int, int, bool], ...]
    label_shape: tuple[int, int, int]
    window: IntensityWindow | None
    prompts: tuple[ObjectPrompt, ...] = ()  # clicks and boxes of a CSV file
    label_prompt: np.ndarray | None = None  # (H, W) label image on ``prompt_frame``
    prompt_frame: int | None = None  # of a label image, or of automatic segmentation
    geometry: Geometry | None = None  # axes and pixel sizes of the label volume
    fixed_axes: tuple[tuple[str, int], ...] = ()  # the stack's other axes: (name, position)

    @property
    def obj_ids(self) -> list[int]:
        """The object ids known before running (none yet for automatic segmentation)."""
        if self.label_prompt is not None:
            return [int(i) for i in np.unique(self.label_prompt) if i > 0]
        return sorted({p.obj_id for p in self.prompts})

    @property
    def automatic(self) -> bool:
        """Whether the objects are what SAM 2 finds on ``prompt_frame`` (not known yet)."""
        return self.label_prompt is None and not self.prompts

    @property
    def object_order(self) -> list[int]:
        """The object ids in the order a tracker takes them (that of their first prompt)."""
        if self.label_prompt is not None:
            return self.obj_ids
        return list(dict.fromkeys(p.obj_id for p in self.prompts))

    @property
    def prompt_frames(self) -> set[int]:
        """The frames that hold prompts (a label image's, or the automatic segmentation's)."""
        if self.prompts:
            return {p.frame for p in self.prompts}
        return {self.prompt_frame}

    @property
    def tracked_frames(self) -> list[int]:
        return sorted(_tracked(self.passes))


@dataclass(frozen=True)
class JobResult:
    """What a finished job did: per object id, (voxels, frames where it appears); ``dropped``,
    ids of a label image too small for the model's input."""

    job: SegmentJob
    num_frames: int
    obj_ids: list[int]
    tracked_frames: list[int]
    counts: dict[int, tuple[int, int]]
    seconds: float
    dropped: tuple[int, ...] = ()


def plan_jobs(
    stacks: list[Path],
    prompts: Path | None,
    output: Path,
    *,
    fmt: str = "tif",
    overwrite: bool = False,
    to_folder: bool | None = None,
    embeddings: Path | None = None,
    spill_dir: str | os.PathLike | None = None,
) -> list[SegmentJob]:
    """Pair each stack with its prompts file and output path, and check the paths.

    ``prompts`` is one CSV or label image for every stack, a folder holding ``<stack
    name>.csv`` for each, or None (segment everything: ``SegmentOptions.auto_frame``).
    ``output`` is the label file of a single stack, or a folder (``<stack name>_labels.<fmt>``
    in it; ``fmt``: "tif", "zarr" or "ome.zarr") for several; ``to_folder`` forces one or the
    other (default: a folder for several stacks or an existing folder not named .zarr).
    ``embeddings``: the embeddings store of a single stack, or a folder of ``<stack
    name>.embeddings.zarr`` for several (made if missing, reused if there). Nothing is created.

    No output is, holds or lies inside anything the run reads or keeps: a stack, an
    embeddings store; nor is or holds the prompts (file or folder) or ``spill_dir``."""
    for s in stacks:
        if not s.exists():
            raise InputError(f"stack not found: {s}")
    if prompts is not None and not prompts.exists():
        raise InputError(f"prompts file not found: {prompts}")
    if to_folder is None:
        to_folder = len(stacks) > 1 or (output.is_dir() and not is_zarr_output(output))
    if to_folder:
        check_writable_folder(output, what="output folder", create=True)
    several = len(stacks) > 1
    stores = [embeddings_path(embeddings, stack, several) for stack in stacks]
    kept = [s for s in stores if s is not None]  # read and filled: never an output
    read_only = [p for p in (prompts, spill_dir) if p is not None]
    jobs = []
    seen: dict[Path, Path] = {}
    for stack, store in zip(stacks, stores):
        stem = stack_stem(stack)
        csv = prompts / f"{stem}.csv" if prompts is not None and prompts.is_dir() else prompts
        if csv is not None and not csv.is_file():
            raise InputError(f"no prompts for {stack}: {csv} not found")
        name = f"{stem}_ctc" if fmt == "ctc" else f"{stem}_labels.{fmt}"
        target = output / name if to_folder else output
        if target in seen:
            raise InputError(
                f"{seen[target]} and {stack} would both write {target}; give stacks distinct names"
            )
        seen[target] = stack
        check_output(
            target,
            [*stacks, *kept],
            overwrite=overwrite,
            read_only=read_only,
            folder_exists=not (to_folder and not output.exists()),
            any_name=fmt == "ctc",
        )
        jobs.append(SegmentJob(stack, csv, target, store, ctc=fmt == "ctc"))
    return jobs


def embeddings_path(embeddings: Path | None, stack: Path, several: bool) -> Path | None:
    """The store of ``stack``: ``embeddings`` itself for one stack, ``<stack
    name>.embeddings.zarr`` in the folder ``embeddings`` for several. Checked to be neither the
    stack nor around or inside it."""
    if embeddings is None:
        return None
    store = embeddings / f"{stack_stem(stack)}.embeddings.zarr" if several else embeddings
    target, src = store.resolve(), stack.resolve()
    if target == src or target in src.parents or src in target.parents:
        raise InputError(f"embeddings {store} would be the stack {stack}, or around or in it")
    if store.exists() and not store.is_dir():
        raise InputError(f"embeddings {store} is a file, not an embeddings store (a folder)")
    if not store.exists():  # an existing store may be read-only: it is then only read
        check_writable_folder(store.parent, what="embeddings folder", create=several)
    return store


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
        n = stack.num_frames
        prompts, label_prompt, prompt_frame = (), None, None
        if job.prompts is None:
            if options.auto_frame is None:
                raise InputError("give prompts (clicks, boxes or a label image) or --auto FRAME")
            prompt_frame = _frame_option("--auto", options.auto_frame, n, where)
            frames = [prompt_frame]
        elif job.label_image_prompts:
            prompt_frame = _frame_option("--prompt-frame", options.prompt_frame, n, where)
            label_prompt = read_label_prompt(job.prompts, stack, prompt_frame)
            frames = [prompt_frame]
        else:
            prompts = tuple(read_prompts(job.prompts, stack))
            frames = [p.frame for p in prompts]
        for name, value in (("--start", options.start), ("--stop", options.stop)):
            if value is not None:
                _frame_option(name, value, n, where)
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
        largest = max([p.obj_id for p in prompts], default=1)
        if label_prompt is not None:
            largest = int(label_prompt.max())
        try:
            dtype = label_dtype_for(largest)
        except LabelError as e:
            raise InputError(f"{job.prompts}: {e}") from None
        _check_tiff_range(job, passes, stack.label_shape, dtype)
        try:
            source = FrameSource(
                stack.frames, image_size=options.image_size, channel=options.channel
            )
        except FrameSourceError as e:
            raise InputError(f"{where}: {e}") from None
        except Exception as e:  # a reader's own error on a sampled frame: truncated, corrupt
            raise InputError(
                f"{where}: its frames cannot be read ({type(e).__name__}: {e}); is the file "
                "complete and readable?"
            ) from e
        if job.embeddings is not None and job.embeddings.exists():
            check_store_for(job.embeddings, source, options)
        return CheckedJob(
            job,
            n,
            tuple(passes),
            stack.label_shape,
            source.window,
            prompts,
            label_prompt,
            prompt_frame,
            stack.label_geometry,
            tuple(stack.fixed_axes.items()),
        )
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
    from .engine.automatic import AutomaticMaskGenerator
    from .engine.lineage import LineageOptions

    finder = AutomaticMaskGenerator(model, channel=options.channel, **options.auto)
    return {
        "new_objects": options.new_objects,
        "divisions": options.divisions,
        "lineage_options": LineageOptions(finder=finder),
    }


def write_lineage_outputs(labels, stack, tracker, checked: CheckedJob, options) -> None:
    """The CTC folder (``--format ctc``: the job's output) and the tracks file, from the
    finished labels and the tracker's lineage."""
    from .io.tracks import parents_of, write_ctc, write_tracks

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
        from .engine.labels import new_labels

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
    if checked.automatic:
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
    from .engine.automatic import AutomaticMaskGenerator, masks_to_labels

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


def check_store_for(path: Path, source, options: SegmentOptions) -> None:
    """What of an existing embeddings store can be checked before the model loads: that it is
    one, whole (its arrays there, of this model's shapes), made for this stack (pixels, channel,
    window) and for this model name and input size (the weights are checked once the model is
    loaded)."""
    from .engine.embeddings import (
        EmbeddingsError,
        EmbeddingStore,
        data_signature,
        embedding_layout,
    )
    from .model import CONFIGS

    expected = data_signature(source)
    layout = None
    if options.model is not None:
        expected = {**expected, "model": options.model, "image_size": options.image_size}
        if options.model in CONFIGS:
            layout = embedding_layout(CONFIGS[options.model].with_image_size(options.image_size))
    try:
        stored = EmbeddingStore.read_signature(path)
        unchecked = {k: v for k, v in stored.items() if k not in expected}
        EmbeddingStore.check_signature(path, stored, {**expected, **unchecked})
        EmbeddingStore.check(path, len(source), layout)
    except EmbeddingsError as e:
        raise InputError(str(e)) from None


def embed_stack(model, stack_path: Path, store: Path, options: SegmentOptions, progress=None):
    """Compute every frame's embedding of a stack into ``store`` (frames already there are
    skipped); returns (frames encoded, frames in the stack)."""
    with tracking(model, stack_path, options, store) as (stack, tracker):
        return tracker.precompute(progress=progress), stack.num_frames


@contextlib.contextmanager
def tracking(model, stack_path: Path, options: SegmentOptions, embeddings=None, window=None):
    """(stack, tracker) of a stack on disk, both closed (files, threads, temporary stores)
    however the block ends."""
    from .engine.video import VideoTracker

    stack = open_stack(stack_path, axis=options.axis, index=options.index)
    tracker = None
    try:
        tracker = VideoTracker(
            model,
            stack.frames,
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


def check_stack(path: Path, options: SegmentOptions):
    """Open a stack and check its frames against the options (shape, dtype, channel, intensity
    window) without the model; returns its :class:`~.engine.frames.FrameSource`."""
    stack = open_stack(path, axis=options.axis, index=options.index)
    try:
        try:
            check_frame_layout(stack.frames.shape[1:], stack.frames.dtype, options.channel)
            return FrameSource(stack.frames, image_size=options.image_size, channel=options.channel)
        except (ValueError, FrameSourceError) as e:
            raise InputError(f"{path}: {e}") from None
    finally:
        stack.close()


# A TIFF output holds every frame of the stack; past this many bytes of frames that no pass
# tracks (zeros), it is refused in favour of zarr, which stores only the frames written.
TIFF_UNTRACKED_LIMIT = 1 << 30


def _check_tiff_range(job: SegmentJob, passes, label_shape, dtype) -> None:
    if is_zarr_output(job.output) and not job.ctc:
        return
    tracked = _count_tracked(passes)
    frame_bytes = int(np.prod(label_shape[1:])) * np.dtype(dtype).itemsize
    untracked = (label_shape[0] - tracked) * frame_bytes
    if untracked > TIFF_UNTRACKED_LIMIT:
        size = label_shape[0] * frame_bytes / 2**30
        raise InputError(
            f"output {job.output}: a TIFF holds all {label_shape[0]:,} frames of the stack, "
            f"and only {tracked:,} are tracked: it would be {size:,.1f} GiB, "
            f"{untracked / 2**30:,.1f} GiB of it zeros. Write zarr instead (-o "
            f"{job.output.with_suffix('.zarr').name}: only the tracked frames are stored), or "
            "track more of the stack"
        )


def _count_tracked(passes) -> int:
    """How many distinct frames the passes track (their ranges may share frames)."""
    count, end = 0, -1
    for low, high in sorted((min(a, b), max(a, b)) for a, b, _ in passes):
        count += max(0, high - max(low, end + 1) + 1)
        end = max(end, high)
    return count


def _tracked(passes) -> set[int]:
    return {f for a, b, _ in passes for f in range(min(a, b), max(a, b) + 1)}


def _frame_option(name: str, value: int, n: int, where: str) -> int:
    if not 0 <= value < n:
        raise InputError(
            f"{where}: {name} {value} is out of range: the stack has {n} frames (0..{n - 1})"
        )
    return value
