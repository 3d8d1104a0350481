"""``napari-sam2 segment --workers N`` / ``--scheduler ADDRESS``: the checked stacks as one
Dask task each, on a cluster started here (processes on this machine) or an existing one."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from pathlib import Path

from ..batch.dask_tasks import ClusterBars, ModelSpec, run_on_cluster
from ..batch.plan import CheckedJob, JobResult, SegmentOptions, resolve_checkpoint
from ..batch.run import discard_partials
from ..io import InputError
from .common import log, print_summary


def check_cluster_options(args: argparse.Namespace) -> None:
    """Before anything runs: dask.distributed is there, ``--scheduler`` is an address a client
    can dial, and ``--workers`` is at most this machine's cores (capped, with a warning: more
    processes than cores only compete for them)."""
    if args.workers is None and args.scheduler is None:
        return
    try:
        from distributed.comm.addressing import parse_address, parse_host_port
    except ImportError:
        raise InputError(
            "--workers and --scheduler need dask.distributed: pip install 'napari-sam2[dask]'"
        ) from None
    if args.scheduler is not None:
        address = args.scheduler
        try:
            scheme, location = parse_address(address.strip(), strict=False)
            if scheme in ("tcp", "tls", "ws", "wss"):
                host, port = parse_host_port(location, default_port=8786)
                if not host or any(c.isspace() for c in host) or not 0 < int(port) < 65536:
                    raise ValueError(f"bad host or port in {location!r}")
            elif not location or any(c.isspace() for c in location):
                raise ValueError(f"nothing to connect to after {scheme}://")
        except (ValueError, TypeError) as e:
            raise InputError(
                f"--scheduler {address!r} is not a Dask scheduler address ({e}); give one like "
                "tcp://head:8786 (what the scheduler prints, or cluster.scheduler_address)"
            ) from None
        return
    cpus = _cores()
    if args.workers > cpus:
        log(
            f"--workers {args.workers}: this machine has {cpus} cores; starting {cpus} workers "
            "(more processes than cores only compete for them; --scheduler for a larger "
            "cluster)"
        )
        args.workers = cpus


def _cores() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cpus or 1)


def segment_on_cluster(
    args: argparse.Namespace, checked: list[CheckedJob], options: SegmentOptions
):
    """Run the checked jobs on Dask; print each stack's summary as it finishes. Returns (done,
    failed) as :func:`napari_sam2.batch.dask_tasks.run_on_cluster`."""
    # (check_cluster_options ran before anything else)
    # the workers only read the weights: find (or fetch) them here, first
    path = resolve_checkpoint(
        args.model, args.checkpoint, cache_dir=args.cache_dir, progress=not args.quiet
    )
    spec = ModelSpec(args.model, path, args.image_size, args.device, args.precision, args.compile)
    try:
        return _run(args, spec, checked, options)
    except BaseException:
        # Ctrl+C, SIGTERM: a local cluster's workers are gone now; what their tasks had begun
        # to write goes too (a complete output has its final name and stays)
        discard_partials(checked)
        raise


def _run(args, spec: ModelSpec, checked: list[CheckedJob], options: SegmentOptions):
    with open_client(args) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        threads = sorted({w["nthreads"] for w in workers.values()})
        each = "/".join(map(str, threads)) + (" thread" if threads == [1] else " threads")
        log(
            f"Dask: {len(workers)} workers ({each} each) at "
            f"{client.scheduler.address}; {len(checked)} stacks",
            args.quiet,
        )
        # a local scheduler serves the dashboard only with bokeh installed (else a bare page)
        link = dashboard_link(client) if args.scheduler is not None or _has_bokeh() else None
        if link:
            log(f"Dask dashboard: {link}", args.quiet)
        bars = ClusterBars(checked, not args.quiet)

        def done(result: JobResult) -> None:
            with bars.write():
                print_summary(result)
            bars.finished(result.job.stack)

        def failed(stack: Path, message: str) -> None:
            with bars.write():
                log(f"{stack}: failed: {message}")
            bars.finished(stack)

        try:
            return run_on_cluster(
                client,
                spec,
                checked,
                options,
                on_done=done,
                on_failed=failed,
                on_frames=None if args.quiet else bars.frames_done,
                objects_per_task=args.objects_per_task,
            )
        finally:
            bars.close()


@contextlib.contextmanager
def open_client(args: argparse.Namespace):
    """A client of the cluster at ``--scheduler``, or of a local cluster of ``--workers``
    processes that share this machine's cores (closed on exit)."""
    from dask.distributed import Client, LocalCluster

    if args.scheduler is not None:
        try:
            client = Client(args.scheduler, timeout="30s")
        except (OSError, TimeoutError, ValueError) as e:
            raise InputError(f"--scheduler {args.scheduler}: cannot connect ({e})") from None
        with client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=args.workers,
            threads_per_worker=max(1, _cores() // args.workers),
            processes=True,
            host="127.0.0.1",
            # ":8787", the usual address, where it is free (Dask takes another if not);
            # without bokeh only a bare HTTP server: any free port
            dashboard_address=":8787" if _has_bokeh() else ":0",
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def dashboard_link(client) -> str | None:
    """The dashboard's address, where the scheduler serves one."""
    try:
        if "dashboard" not in client.scheduler_info().get("services", {}):
            return None
        return client.dashboard_link
    except Exception:
        return None


def _has_bokeh() -> bool:
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True
