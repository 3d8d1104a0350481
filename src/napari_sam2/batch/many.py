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

Every stack is checked before any work starts (:func:`.plan.check_job`); a stack that
fails its checks, or fails while it runs (a read error, a worker out of memory, a worker lost
twice), is recorded in the report and never stops the others. Each stack is the same
:func:`.run.run_job` the serial command line runs, so the labels are identical.

On a cluster (:mod:`.dask_tasks`), the model is loaded once per worker process and
kept there (keyed by its name, checkpoint, size, device and precision), never shipped with the
tasks; a stack with very many objects may be split into tasks of a few objects each
(``objects_per_task``, :mod:`.object_tasks`). The checkpoint is resolved
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
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..io import InputError, make_output_folder
from .dask_tasks import ClusterBars, ModelSpec, run_on_cluster
from .plan import JobResult, SegmentJob, SegmentOptions, plan_jobs, prepare, resolve_checkpoint
from .run import FrameBars, run_here


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
        "ome.zarr"); or :class:`.plan.SegmentJob` objects saying all that.
    model, checkpoint, cache_dir, device, precision: as for :func:`napari_sam2.load_model`.
        The checkpoint is resolved here; ``allow_download``: fetch it here if not cached.
    resume: skip stacks whose complete output exists, redo the others (partial outputs and
        outputs of ours cut short included); an existing output napari-sam2 did not write is
        never replaced (a failure of its stack, :func:`.plan.resume_state`); without it an
        existing output is an error (or pass ``overwrite=True``).
    strict: a stack that fails its checks stops everything before it starts (as the command
        line does); by default it is reported in ``failed`` and the others run.
    objects_per_task: on a cluster, split a stack with more objects than this (all prompted
        on one frame: a label image, ``auto_frame``) into tasks of this many objects, merged
        into the same labels (:mod:`.object_tasks`).
    options: fields of :class:`.plan.SegmentOptions` (direction, start, stop,
        image_size, channel, overwrite, auto_frame, tiles, ...).
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
            from ..model.checkpoint import load_model

            loaded = load_model(
                model, path, device, image_size=opts.image_size, precision=precision
            )
            bars = FrameBars(progress)
            try:
                done, failed = run_here(loaded, checked, opts, on_start=bars.start)
            finally:
                bars.close()
        else:
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
    return plan_jobs(  # a URL stays one (a remote stack; an output URL is refused)
        [os.fspath(s) for s in stacks],
        prompts,
        out_dir,
        fmt=fmt,
        overwrite=options.overwrite,
        to_folder=True,
        spill_dir=options.spill_dir,
    )


__all__ = ["BatchReport", "segment_many"]
