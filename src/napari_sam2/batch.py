"""Many stacks at once: in this process, or one task per stack on a Dask cluster.

    from dask.distributed import Client
    import napari_sam2 as ns

    with Client("tcp://head:8786") as client:  # or LocalCluster(...), or client=None: here
        report = ns.segment_many(
            ["a.tif", "b.tif"], model="sam2.1_hiera_tiny", prompts="prompts/", out_dir="out/",
            client=client, direction="both",
        )
    report.done      # {stack: JobResult}
    report.failed    # {stack: "what went wrong"}

Every stack is checked before any work starts (:func:`napari_sam2.jobs.check_job`); a stack that
fails its checks, or fails while it runs (a read error, a worker out of memory, a worker lost
twice), is recorded in the report and never stops the others. Each stack is the same
:func:`napari_sam2.jobs.run_job` the serial command line runs, so the labels are identical.

On a cluster (:mod:`napari_sam2.dask_tasks`), the model is loaded once per worker process and
kept there (keyed by its name, checkpoint, size, device and precision), never shipped with the
tasks; a stack with very many objects may be split into tasks of a few objects each
(``objects_per_task``, :mod:`napari_sam2.object_tasks`). The checkpoint is resolved
(and, if allowed, downloaded) here, before any task starts: workers only read it, so it must lie
on storage they all see. Tasks on one worker run one at a time, each with as many PyTorch threads
as the worker has Dask threads (``cores / processes`` of a dask-jobqueue cluster).

Outputs appear under their final name only when complete and carry a mark saying napari-sam2
wrote them, so ``resume=True`` skips the stacks whose marked output is complete (right shape,
all its data), redoes those missing or cut short, and refuses any other file at an output path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .io import InputError, discard_partial, make_output_folder, stack_stem
from .jobs import CheckedJob, JobResult, SegmentJob, SegmentOptions, check_job, plan_jobs, run_job


@dataclass
class BatchReport:
    """What a batch did: per stack, its result (``done``), its error message (``failed``), or
    that its complete output was already there (``skipped``, with ``resume``)."""

    done: dict[Path, JobResult] = field(default_factory=dict)
    failed: dict[Path, str] = field(default_factory=dict)
    skipped: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        parts = [f"{len(self.done)} done"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} already done (skipped)")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        return f"{', '.join(parts)} in {self.seconds:.1f} s"


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
    from . import weights

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
    from .io import open_stack, output_state

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


# ---------------------------------------------------------------------------------- running
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


# ------------------------------------------------------------------------------ the front door
def segment_many(
    stacks: Iterable[str | os.PathLike | SegmentJob],
    model: str = "sam2.1_hiera_tiny",
    *,
    prompts: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    fmt: str = "tif",
    client=None,
    checkpoint: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    allow_download: bool = True,
    device: str | None = None,
    precision: str = "fp32",
    resume: bool = False,
    strict: bool = False,
    progress: bool = True,
    objects_per_task: int | None = None,
    **options,
) -> BatchReport:
    """Segment and track many stacks, here (``client=None``) or on a Dask cluster.

    stacks: stack paths, each with ``<stack name>.csv`` in the folder ``prompts`` (or one
        prompts file for all, or None with ``auto_frame=F``: segment everything on frame F),
        written to ``out_dir/<stack name>_labels.<fmt>`` (``fmt``: "tif", "zarr" or
        "ome.zarr"); or :class:`~napari_sam2.jobs.SegmentJob` objects saying all that.
    model, checkpoint, cache_dir, device, precision: as for :func:`napari_sam2.load_model`.
        The checkpoint is resolved here; ``allow_download``: fetch it here if not cached.
    resume: skip stacks whose complete output exists, redo the others (partial outputs and
        outputs of ours cut short included); an existing output napari-sam2 did not write is
        never replaced (a failure of its stack, :func:`resume_state`); without it an existing
        output is an error (or pass ``overwrite=True``).
    strict: a stack that fails its checks stops everything before it starts (as the command
        line does); by default it is reported in ``failed`` and the others run.
    objects_per_task: on a cluster, split a stack with more objects than this (all prompted
        on one frame: a label image, ``auto_frame``) into tasks of this many objects, merged
        into the same labels (:mod:`napari_sam2.object_tasks`).
    options: fields of :class:`~napari_sam2.jobs.SegmentOptions` (direction, start, stop,
        image_size, channel, overwrite, auto_frame, ...).
    """
    started = time.perf_counter()
    if objects_per_task is not None and client is None:
        raise InputError(
            "objects_per_task splits stacks between the workers of a cluster: pass client= too"
        )
    opts = SegmentOptions(**{"model": model, **options})
    if resume:
        opts = replace(opts, overwrite=True)  # what is redone replaces partial or stale output
    jobs = _jobs(stacks, prompts, out_dir, fmt, opts)
    checked, failed, skipped = prepare(jobs, opts, resume=resume, strict=strict)
    report = BatchReport(failed=dict(failed), skipped=skipped)
    if checked:
        for job in checked:
            make_output_folder(job.job.output)
        path = resolve_checkpoint(
            model, checkpoint, cache_dir=cache_dir, allow_download=allow_download, progress=progress
        )
        if client is None:
            from .model.checkpoint import load_model

            loaded = load_model(
                model, path, device, image_size=opts.image_size, precision=precision
            )
            bars = FrameBars(progress)
            try:
                done, failed = run_here(loaded, checked, opts, on_start=bars.start)
            finally:
                bars.close()
        else:
            from .dask_tasks import ClusterBars, ModelSpec, run_on_cluster

            spec = ModelSpec(model, path, opts.image_size, device, precision)
            bars = ClusterBars(checked, progress)
            try:
                done, failed = run_on_cluster(
                    client,
                    spec,
                    checked,
                    opts,
                    on_done=lambda result: bars.finished(result.job.stack),
                    on_failed=lambda stack, message: bars.finished(stack),
                    on_frames=bars.frames_done if progress else None,
                    objects_per_task=objects_per_task,
                )
            finally:
                bars.close()
        report.done.update(done)
        report.failed.update(failed)
    report.seconds = time.perf_counter() - started
    return report


def _jobs(stacks, prompts, out_dir, fmt, options: SegmentOptions) -> list[SegmentJob]:
    stacks = list(stacks)
    if all(isinstance(s, SegmentJob) for s in stacks):
        return stacks
    if any(isinstance(s, SegmentJob) for s in stacks):
        raise TypeError("give stack paths or SegmentJob objects, not a mix")
    if out_dir is None:
        raise InputError("give out_dir: the folder the label files are written to")
    return plan_jobs(
        [Path(s) for s in stacks],
        None if prompts is None else Path(prompts),
        Path(out_dir),
        fmt=fmt,
        overwrite=options.overwrite,
        to_folder=True,
        spill_dir=options.spill_dir,
    )


class FrameBars:
    """A tqdm bar over the frames of each stack run here, one after another."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar = None

    def start(self, i: int, job: CheckedJob) -> Callable[[int, int], None]:
        from tqdm.auto import tqdm

        from .engine.video import frames_in

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


__all__ = [
    "BatchReport",
    "describe",
    "discard_partials",
    "prepare",
    "resolve_checkpoint",
    "resume_state",
    "run_here",
    "segment_many",
]
