"""Batch work on a Dask cluster: the tasks the workers run, and how the client submits them
and gathers their results (:func:`run_on_cluster`, used by :func:`napari_sam2.segment_many`
and ``napari-sam2 segment --workers/--scheduler``).

One task per stack, running :func:`.run.run_job`; with ``objects_per_task``, a
stack with more objects than that is split into groups of objects, one task each, and merged by
a last task (:mod:`.object_tasks`). The model is loaded once per worker process and
kept there, keyed by its :class:`ModelSpec`; tasks on one worker run one at a time, each with
as many PyTorch threads as the worker has Dask threads.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..engine.frames import FrameSourceError
from ..io import InputError, discard_partial, stack_location, stack_stem
from . import object_tasks
from .plan import CheckedJob, JobResult, SegmentOptions
from .run import describe, discard_partials, run_job


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to load the model itself: a checkpoint path it can read."""

    name: str
    checkpoint: str
    image_size: int = 1024
    device: str | None = None
    precision: str = "fp32"
    compile: bool = False

    def load(self):
        from ..model.checkpoint import load_model

        if not Path(self.checkpoint).is_file():
            import socket

            raise FileNotFoundError(
                f"checkpoint {self.checkpoint} not found on {socket.gethostname()}: put the "
                "weights on storage every worker sees (--cache-dir or --checkpoint)"
            )
        return load_model(
            self.name,
            self.checkpoint,
            self.device,
            image_size=self.image_size,
            precision=self.precision,
            compile=self.compile,
        )


def run_on_cluster(
    client,
    spec: ModelSpec,
    checked: list[CheckedJob],
    options: SegmentOptions,
    *,
    on_done: Callable[[JobResult], None] | None = None,
    on_failed: Callable[[Path, str], None] | None = None,
    on_frames: Callable[[Path, int, int], None] | None = None,
    objects_per_task: int | None = None,
    retries: int = 1,
) -> tuple[dict[Path, JobResult], dict[Path, str]]:
    """Run checked jobs on a Dask ``client``; results as they finish. Their outputs were
    checked with them: what a task finds at its output is an earlier attempt of its own, which
    it replaces.

    One task per job; with ``objects_per_task``, a job with more objects than that, all
    prompted on one frame, becomes one task per group of objects and a merging task (automatic
    segmentation first runs as a task of its own, to find the objects). A task that raises is
    retried ``retries`` times (not one its data refuses: NaN frames fail again), one whose
    worker dies is rescheduled by Dask (up to its ``allowed-failures``); what still fails is
    recorded. ``on_frames(stack, done, total)``: the tasks' progress, sent by the workers as
    Dask events (about twice a second per task; called on the client's thread)."""
    from dask.distributed import as_completed

    # Existing outputs were refused (or allowed, with overwrite) before anything was submitted.
    # An output that exists when a task runs is then that task's own: written by an attempt
    # whose worker died before it could report, and Dask reruns it. The rerun replaces it.
    options = replace(options, overwrite=True)
    token = f"{time.time_ns():x}"
    topic = f"napari-sam2-frames-{token}" if on_frames is not None else None
    if topic is not None:
        client.subscribe_topic(topic, _FramesHandler(on_frames))
    pending: dict = {}  # future -> (what it gives: "stack" or "objects", its job)
    finished = as_completed()

    def task(name: str, job: CheckedJob, fn, *args):
        key = f"napari-sam2-{name}-{stack_stem(job.job.stack)}-{token}"
        return client.submit(fn, *args, key=key, pure=False, retries=retries)

    def watch(future, what: str, job: CheckedJob) -> None:
        pending[future] = (what, job)
        finished.add(future)

    def submit_stack(i: int, job: CheckedJob) -> None:
        """The job's task, or its groups' tasks and the merge (which is watched)."""
        if not object_tasks.splittable(job, objects_per_task):
            watch(task(str(i), job, _run_on_worker, spec, job, options, topic), "stack", job)
            return
        discard_partial(job.job.output)  # pieces of an earlier, interrupted run
        groups = object_tasks.groups(job, objects_per_task)
        results = [
            task(f"{i}.{k}", job, _group_on_worker, spec, job, options, ids, k, len(groups), topic)
            for k, ids in enumerate(groups)
        ]
        watch(task(f"{i}m", job, _merge_on_worker, job, options, *results), "stack", job)

    for i, job in enumerate(checked):
        if job.automatic and object_tasks.splittable(job, objects_per_task):
            watch(task(f"{i}a", job, _automatic_on_worker, spec, job, options), "objects", job)
        else:
            submit_stack(i, job)
    index = {id(job): i for i, job in enumerate(checked)}
    done, failed = {}, {}
    try:
        for future in finished:
            what, job = pending.pop(future)
            stack = job.job.stack
            try:
                result = future.result()
                if isinstance(result, Refused):
                    raise InputError(result.message)
            except Exception as e:
                failed[stack] = describe(e)
                discard_partials([job])
                if on_failed is not None:
                    on_failed(stack, failed[stack])
                continue
            finally:
                # forget it now: a finished stack whose worker dies later is not rerun
                future.release()
            if what == "objects":  # automatic segmentation found them: now track them
                submit_stack(index[id(job)], replace(job, label_prompt=result))
                continue
            done[stack] = result
            if on_done is not None:
                on_done(result)
    except BaseException:  # Ctrl+C, SIGTERM: stop what is queued or running
        client.cancel(list(pending), force=True)
        discard_partials([job for _, job in pending.values()])
        raise
    finally:
        if topic is not None:
            client.unsubscribe_topic(topic)
    return done, failed


class _FramesHandler:
    """Frame-progress events to ``on_frames(stack, done, total)``; the groups of a split stack
    count together (their mean)."""

    def __init__(self, on_frames: Callable[[Path, int, int], None]) -> None:
        self.on_frames = on_frames
        self.parts: dict[tuple[str, int], int] = {}

    def __call__(self, event) -> None:
        message = event[1]
        stack, parts = message["stack"], int(message.get("parts", 1))
        self.parts[stack, int(message.get("part", 0))] = int(message["done"])
        done = sum(self.parts.get((stack, k), 0) for k in range(parts)) // parts
        self.on_frames(stack_location(stack), done, int(message["total"]))


@dataclass(frozen=True)
class Refused:
    """A task's answer for a stack its data refuses while running (a NaN frame found midway):
    returned, not raised, so that Dask does not retry what would fail again."""

    message: str


_models: dict[ModelSpec, object] = {}
_model_lock = threading.Lock()


def _worker_model(spec: ModelSpec):
    """The worker's model (loaded on its first task, kept), with the worker's threads for
    PyTorch; call it holding ``_model_lock``: tasks on one worker run one at a time."""
    import torch

    threads = _worker_threads()
    if threads:
        torch.set_num_threads(threads)
    model = _models.get(spec)
    if model is None:
        _models.clear()  # one model per worker
        _restore_malloc_thresholds()
        model = _models[spec] = spec.load()
    return model


def _run_on_worker(
    spec: ModelSpec, job: CheckedJob, options: SegmentOptions, topic: str | None = None
) -> JobResult | Refused:
    """A task: one job, all its objects."""
    with _model_lock:
        model = _worker_model(spec)
        progress = None if topic is None else _FrameEvents(topic, job.job.stack)
        try:
            return run_job(model, job, options, progress)
        except (InputError, FrameSourceError) as e:
            return Refused(str(e))


def _automatic_on_worker(spec: ModelSpec, job: CheckedJob, options: SegmentOptions):
    """A task: the label image of everything SAM 2 finds on a job's frame."""
    with _model_lock:
        model = _worker_model(spec)
        try:
            return object_tasks.automatic_labels(model, job, options)
        except (InputError, FrameSourceError) as e:
            return Refused(str(e))


def _group_on_worker(spec, job, options, obj_ids, index, parts, topic=None):
    """A task: one group of a job's objects, tracked into its piece."""
    with _model_lock:
        model = _worker_model(spec)
        progress = None if topic is None else _FrameEvents(topic, job.job.stack, index, parts)
        try:
            return object_tasks.track_group(model, job, options, obj_ids, index, progress)
        except (InputError, FrameSourceError) as e:
            return Refused(str(e))


def _merge_on_worker(job: CheckedJob, options: SegmentOptions, *results):
    """A task: a job's groups merged into its output (needs no model)."""
    refused = [r for r in results if isinstance(r, Refused)]
    try:
        if refused:
            raise InputError(refused[0].message)
        return object_tasks.merge_groups(job, options, list(results))
    except (InputError, FrameSourceError) as e:
        discard_partial(job.job.output)
        return Refused(str(e))


class _FrameEvents:
    """A task's frame progress, sent to the client as Dask events: at most every ``interval``
    seconds, and the last frame always. A group's task says which group (``part`` of
    ``parts``)."""

    def __init__(self, topic: str, stack: Path, part: int = 0, parts: int = 1) -> None:
        from dask.distributed import get_worker

        self.worker = get_worker()
        self.topic, self.interval = topic, 0.5
        self.message = {"stack": str(stack), "part": part, "parts": parts}
        self.sent = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.sent < self.interval:
            return
        self.sent = now
        self.worker.log_event(self.topic, {**self.message, "done": done, "total": total})


def _restore_malloc_thresholds() -> None:
    """Undo, in this worker process, what Dask's nanny does to glibc's allocator.

    The nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (to hand freed memory back to
    the OS at once). Setting it also fixes glibc's mmap threshold at 128 KiB, so every tensor
    above that is a fresh mmap, page-faulted in and unmapped again: tracking runs 1.6x slower
    (measured: 5.4 s against 3.4 s per stack of 6 frames at input 512 on 2 cores). A 32 MiB
    mmap threshold and a 256 MiB trim threshold give the default speed back; memory is still
    returned, in larger steps."""
    if not os.environ.get("MALLOC_TRIM_THRESHOLD_") or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl): nothing to undo
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_trim_threshold, 256 * 2**20)
    libc.mallopt(m_mmap_threshold, 32 * 2**20)


def _worker_threads() -> int | None:
    try:
        from dask.distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


class ClusterBars:
    """tqdm bars over the stacks and over all their frames, for tasks running elsewhere (their
    frame counts arrive as events, from another thread; a rerun task does not count twice)."""

    def __init__(self, checked: list[CheckedJob], enabled: bool = True) -> None:
        from tqdm.auto import tqdm

        from ..engine.video import frames_in

        self.totals = {job.job.stack: frames_in(list(job.passes)) for job in checked}
        self.seen = dict.fromkeys(self.totals, 0)  # frames counted, per stack
        self.finished_stacks = 0
        self.lock = threading.Lock()
        off = not enabled
        self.stacks = tqdm(total=len(checked), desc="stacks", unit="stack", disable=off)
        self.frames = tqdm(
            total=sum(self.totals.values()), desc="frames", unit="frame", disable=off
        )

    def frames_done(self, stack: Path, done: int, total: int = 0) -> None:
        with self.lock:
            if stack not in self.totals:
                return
            step = min(done, self.totals[stack]) - self.seen[stack]
            if step > 0:
                self.seen[stack] += step
                self.frames.update(step)

    def finished(self, stack: Path) -> None:
        """A stack done or failed: its frames count as processed."""
        self.frames_done(stack, self.totals.get(stack, 0))
        with self.lock:
            self.finished_stacks += 1
            self.stacks.update(1)

    def write(self):
        """A context for printing between the bars' refreshes."""
        from tqdm.auto import tqdm

        return tqdm.external_write_mode()

    def close(self) -> None:
        self.frames.close()
        self.stacks.close()


__all__ = ["ClusterBars", "ModelSpec", "Refused", "run_on_cluster"]
