"""Planning and checks: each stack's segmentation as a job, planned and checked completely
before the model loads (:mod:`.run` then runs it). They print nothing, parse no arguments and
need no Qt.

    jobs = plan_jobs(stacks, prompts, output, fmt="tif", overwrite=False)
    checked = [check_job(job, options) for job in jobs]     # no model yet: fails fast
    checked, failed, skipped = prepare(jobs, options, resume=True)  # all of them, resumable

Prompts are a CSV of clicks and boxes, a label image whose objects all become mask prompts on
one frame (``SegmentOptions.prompt_frame``), or none: then SAM 2 segments everything on
``SegmentOptions.auto_frame`` and tracks every object it finds.

Everything a user can get wrong is found by :func:`plan_jobs` and :func:`check_job`: missing
files, an output that is (or holds, or lies inside) a stack or an embeddings store, or is (or
holds) the prompts or the spill folder, an existing output without ``overwrite``, a TIFF output
that would be mostly zeros (a short range of a long stack: zarr stores only what is tracked),
folders that do not exist or cannot be written, prompts outside the stack, a ``start``/``stop``
outside it or against the direction, a ``channel`` the data do not have, complex data, object
ids no label dtype holds, and frames that cannot set an intensity window. :func:`prepare`
checks a batch of jobs (and, with ``resume``, what is already done: :func:`resume_state`);
:func:`resolve_checkpoint` finds (or downloads) the weights before any work starts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..engine.frames import FrameSource, FrameSourceError
from ..engine.labels import LabelError, label_dtype_for
from ..engine.preprocess import IntensityWindow, check_frame_layout
from ..engine.video import plan_passes
from ..io import (
    LABEL_PROMPT_SUFFIXES,
    InputError,
    ObjectPrompt,
    check_output,
    check_writable_folder,
    is_url,
    is_zarr_output,
    local_path,
    open_stack,
    read_label_prompt,
    read_prompts,
    stack_location,
    stack_stem,
)
from ..io.ome import Geometry


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
    tiles: str = "auto"  # track big frames in windows: "auto", "on" or "off" (TILES_CHOICES)


@dataclass(frozen=True)
class SegmentJob:
    """One stack (a local path, or the URL of a remote OME-Zarr image: a str), its prompts (a
    CSV file, a label image, or None: segment everything), and the label file it becomes."""

    stack: Path | str
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
    stacks: list[str | os.PathLike],
    prompts: str | os.PathLike | None,
    output: str | os.PathLike,
    *,
    fmt: str = "tif",
    overwrite: bool = False,
    to_folder: bool | None = None,
    embeddings: str | os.PathLike | None = None,
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
    embeddings store; nor is or holds the prompts (file or folder) or ``spill_dir``.

    A stack may be the URL of a remote OME-Zarr image (``https://``, ``s3://``: read-only,
    opened and checked by :func:`check_job`); the output, the prompts, the embeddings and
    ``spill_dir`` are local paths (a URL is refused)."""
    output = local_path(output, "output")
    if prompts is not None:
        prompts = local_path(prompts, "prompts file")
    if embeddings is not None:
        embeddings = local_path(embeddings, "embeddings")
    if spill_dir is not None:
        local_path(spill_dir, "--spill-dir")
    stacks = [stack_location(s) for s in stacks]
    for s in stacks:
        if not is_url(s) and not s.exists():
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


def embeddings_path(
    embeddings: str | os.PathLike | None, stack: Path | str, several: bool
) -> Path | None:
    """The store of ``stack``: ``embeddings`` itself for one stack, ``<stack
    name>.embeddings.zarr`` in the folder ``embeddings`` for several. Checked to be a local path
    (not a URL), neither the stack nor around or inside it (a remote stack is neither)."""
    if embeddings is None:
        return None
    embeddings = local_path(embeddings, "embeddings")
    store = embeddings / f"{stack_stem(stack)}.embeddings.zarr" if several else embeddings
    if not is_url(stack):
        target, src = store.resolve(), Path(stack).resolve()
        if target == src or target in src.parents or src in target.parents:
            raise InputError(f"embeddings {store} would be the stack {stack}, or around or in it")
    if store.exists() and not store.is_dir():
        raise InputError(f"embeddings {store} is a file, not an embeddings store (a folder)")
    if not store.exists():  # an existing store may be read-only: it is then only read
        check_writable_folder(store.parent, what="embeddings folder", create=several)
    return store


TILES_CHOICES = ("auto", "on", "off")


def tracking_tiles(options: SegmentOptions) -> bool | str:
    """The ``tiles`` a job's tracker gets (``engine.window_tracking.make_tracker``):
    "auto" tracks frames larger than 1.5 times the model's input in windows (an embeddings
    store then keeps each window's frames), except with new objects / divisions (whole frames
    only)."""
    if options.tiles == "off":
        return False
    if options.tiles == "on":
        return True
    lineage = options.new_objects is not None or options.divisions
    return False if lineage else "auto"


def check_tiles(options: SegmentOptions) -> None:
    """Refuse a ``tiles`` option that cannot work, before anything is read."""
    if options.tiles not in TILES_CHOICES:
        raise InputError(
            f"--tiles must be one of {', '.join(TILES_CHOICES)}, got {options.tiles!r}"
        )
    if options.tiles != "on":
        return
    if options.new_objects is not None or options.divisions:
        raise InputError(
            "--new-objects and --divisions track whole frames: use --tiles off (or auto) with them"
        )


def check_job(job: SegmentJob, options: SegmentOptions) -> CheckedJob:
    """Read and check everything of ``job`` that can be checked without the model: the stack
    (shape, dtype, channel), the prompts against it, the propagation range, the label dtype,
    and the stack's intensity window (read from up to 8 frames, reused by :func:`run_job`)."""
    check_tiles(options)
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


def check_store_for(path: Path, source, options: SegmentOptions) -> None:
    """What of an existing embeddings store can be checked before the model loads: that it is
    one, whole (its arrays there, of this model's shapes), made for this stack (pixels, channel,
    window) and for this model name and input size (the weights are checked once the model is
    loaded)."""
    from ..engine.embeddings import (
        EmbeddingsError,
        EmbeddingStore,
        data_signature,
        embedding_layout,
    )
    from ..model import CONFIGS

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


def check_stack(path: Path | str, options: SegmentOptions):
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


def resolve_checkpoint(
    name: str,
    checkpoint: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    allow_download: bool = True,
    progress: bool = True,
) -> str:
    """The checkpoint file of model ``name``: ``checkpoint`` if given, else the cached download
    (fetched now if ``allow_download``, else :class:`~napari_sam2.weights.WeightsError`)."""
    from .. import weights

    weights.get_weights(name)  # an unknown name fails first
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise weights.WeightsError(f"checkpoint file not found: {checkpoint}")
        return str(Path(checkpoint).resolve())
    path = weights.cached_path(name, cache_dir)
    if not path.is_file():
        if not allow_download:
            raise weights.WeightsError(
                f"the weights of {name} are not in the cache ({path}); run `napari-sam2 "
                "download`, pass a checkpoint, or allow the download"
            )
        path = weights.fetch(name, cache_dir=cache_dir, progress=progress)
    return str(Path(path).resolve())


# ----------------------------------------------------------------------------------- planning
def prepare(
    jobs: Iterable[SegmentJob],
    options: SegmentOptions,
    *,
    resume: bool = False,
    strict: bool = True,
) -> tuple[list[CheckedJob], dict[Path, str], list[Path]]:
    """Check every job before any work: (checked jobs, {stack: why it cannot run}, stacks
    skipped because their complete output exists (with ``resume``; an existing output that
    napari-sam2 did not write is refused, :func:`resume_state`)).

    ``strict``: any job that fails its checks raises one :class:`InputError` naming them all
    (nothing runs); else they are returned as failures and the others go on."""
    checked, failed, skipped = [], {}, []
    for job in jobs:
        try:
            if resume:
                state = resume_state(job, options)
                if state == "complete":
                    skipped.append(job.stack)
                    continue
            checked.append(check_job(job, options))
        except InputError as e:
            failed[job.stack] = str(e)
    if strict and failed:
        if len(failed) == 1:
            raise InputError(next(iter(failed.values())))
        lines = "\n".join(f"  {stack}: {message}" for stack, message in failed.items())
        raise InputError(f"{len(failed)} stacks cannot be segmented; nothing was run:\n{lines}")
    return checked, failed, skipped


def resume_state(job: SegmentJob, options: SegmentOptions) -> str:
    """What ``resume`` finds at ``job``'s output: "missing", "complete" (skip it) or
    "incomplete" (redo it): see :func:`~napari_sam2.io.output_state`. An output that nothing
    proves napari-sam2 wrote is never replaced by a resume: :class:`InputError`."""
    from ..io import output_state

    if not job.output.exists():
        return "missing"
    stack = open_stack(job.stack, axis=options.axis, index=options.index)
    try:
        expected = stack.label_shape
    finally:
        stack.close()
    state = output_state(job.output, expected)
    if state == "foreign":
        raise InputError(
            f"output {job.output} exists and was not written by napari-sam2 (or cannot be "
            "read), so --resume (resume=True) will not replace it: move it away, choose "
            "another output, or pass --overwrite (overwrite=True) to replace it"
        )
    return state


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
