"""``napari-sam2 segment``: plan and check every stack, load the model once, track each stack
into its label file, print a summary per stack (the work itself is :mod:`napari_sam2.batch`)."""

from __future__ import annotations

import argparse
import glob
import os
import time
from pathlib import Path

from .. import weights
from ..batch.plan import (
    CheckedJob,
    JobResult,
    SegmentOptions,
    check_stack,
    check_store_for,
    embeddings_path,
    plan_jobs,
    prepare,
)
from ..batch.run import FrameBars, embed_stack, run_here
from ..io import InputError, is_url, make_output_folder, stack_stem
from ..model.checkpoint import DeviceError
from .cluster import check_cluster_options, segment_on_cluster
from .common import EXIT_FAILED, EXIT_OK, WeightsUnavailable, log, print_summary


def segment(args: argparse.Namespace) -> int:
    options = SegmentOptions(
        direction=args.direction,
        axis=args.axis,
        index=args.index,
        start=args.start,
        stop=args.stop,
        image_size=args.image_size,
        channel=args.channel,
        # --resume redoes in place only outputs proven ours and incomplete (batch.resume_state)
        overwrite=args.overwrite or args.resume,
        spill_dir=args.spill_dir,
        prompt_frame=args.prompt_frame,
        auto_frame=args.auto,
        auto=_auto_options(args),
        embeddings_dtype=args.embeddings_dtype,
        model=args.model,
        new_objects=args.new_objects,
        divisions=args.divisions,
        tracks=None if args.tracks is None else Path(args.tracks),
        tiles=args.tiles,
    )
    _check_lineage_options(args)
    if args.overwrite and args.resume:
        raise InputError(
            "--overwrite and --resume contradict each other: --overwrite redoes every stack, "
            "--resume keeps the complete outputs; give one"
        )
    if args.objects_per_task is not None and args.workers is None and args.scheduler is None:
        raise InputError(
            "--objects-per-task splits stacks between the workers of a cluster: add --workers N "
            "or --scheduler ADDRESS"
        )
    if (args.prompts is None) == (args.auto is None):
        raise InputError(
            "give either --prompts (clicks, boxes or a label image) or --auto FRAME (segment "
            "everything on a frame)" + (", not both" if args.auto is not None else "")
        )
    check_cluster_options(args)
    to_folder = True if str(args.output).endswith(("/", os.sep)) else None
    if args.format == "ctc" and len(_expand(args.stacks)) == 1:
        to_folder = False  # OUT is the stack's CTC folder
    jobs = plan_jobs(  # paths as given: a URL stack stays one, a URL output is refused
        _expand(args.stacks),
        args.prompts,
        args.output,
        fmt=args.format,
        overwrite=args.overwrite or args.resume,
        to_folder=to_folder,
        embeddings=args.embeddings,
        spill_dir=args.spill_dir,
    )
    on_cluster = args.workers is not None or args.scheduler is not None
    # workers on another machine check their own device; this one may have no GPU
    device = None if args.scheduler is not None else _check_device(args)
    # everything, before the model loads
    checked, _, skipped = prepare(jobs, options, resume=args.resume, strict=True)
    for stack in skipped:
        log(f"{stack}: its complete output exists, skipped (--resume)", args.quiet)
    _check_checkpoint(args)
    if not checked:
        print(f"done: nothing to do, {len(skipped)} stacks already segmented")
        return EXIT_OK
    for job in checked:
        make_output_folder(job.job.output)
    started = time.perf_counter()
    if on_cluster:
        done, failed = segment_on_cluster(args, checked, options)
    else:
        done, failed = _segment_here(args, device, checked, options)
    if len(jobs) > 1:
        elapsed = time.perf_counter() - started
        frames = sum(len(r.tracked_frames) for r in done.values())
        extra = f", {len(skipped)} skipped" if skipped else ""
        print(f"done: {len(done)} stacks{extra}, {frames} frames in {elapsed:.1f} s")
    if failed:
        print(f"failed: {len(failed)} of {len(checked)} stacks (their outputs were not written):")
        for stack, message in failed.items():
            print(f"  {stack}: {message}")
        return EXIT_FAILED
    return EXIT_OK


def _segment_here(args, device, checked: list[CheckedJob], options: SegmentOptions):
    """Each stack in turn in this process, a frame bar each; one failing stack of several is
    reported and the next one starts."""
    model = _load_model(args, device)
    bars = FrameBars(not args.quiet)

    def start(i: int, job: CheckedJob):
        if len(checked) > 1:
            log(f"[{i + 1}/{len(checked)}] {job.job.stack}", args.quiet)
        return bars.start(i, job)

    def done(result: JobResult) -> None:
        bars.close()
        print_summary(result)

    def failed(stack: Path, message: str) -> None:
        bars.close()
        log(f"{stack}: failed: {message}")

    try:
        return run_here(
            model,
            checked,
            options,
            on_start=start,
            on_done=done,
            on_failed=failed,
            keep_going=len(checked) > 1,
        )
    finally:
        bars.close()


def _auto_options(args: argparse.Namespace) -> dict:
    """The AutomaticMaskGenerator options of ``--auto``, checked now (before the model)."""
    options = {
        "points_per_side": args.points_per_side,
        "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_score_thresh,
    }
    if args.auto is not None or args.new_objects is not None:
        from ..engine.automatic import check_generator_options

        try:
            check_generator_options(**options)
        except ValueError as e:
            which = "--auto" if args.auto is not None else "--new-objects"
            raise InputError(f"{which}: {e}") from None
    return options


def _check_lineage_options(args: argparse.Namespace) -> None:
    """--new-objects, --divisions, --format ctc and --tracks: what they need, before anything."""
    lineage = args.new_objects is not None or args.divisions
    if args.divisions and args.direction != "forward":
        raise InputError(
            f"--divisions follows cells forward in time: add --direction forward (not "
            f"{args.direction}; a time-lapse is tracked from its first prompted frame on)"
        )
    extras = lineage or args.format == "ctc" or args.tracks is not None
    if extras and (args.workers is not None or args.scheduler is not None):
        raise InputError(
            "--new-objects, --divisions, --format ctc and --tracks run on this machine: "
            "leave out --workers/--scheduler"
        )
    if args.format == "ctc" and args.resume:
        raise InputError("--resume does not apply to --format ctc: give --overwrite or a new OUT")
    if args.tracks is not None:
        if len(_expand(args.stacks)) != 1:
            raise InputError("--tracks names one file: give one stack")
        from ..io.tracks import check_tracks_output

        check_tracks_output(args.tracks, overwrite=args.overwrite)


def _expand(patterns: list[str]) -> list[Path | str]:
    """Stack paths, with glob patterns expanded here for shells that do not; URLs (remote
    OME-Zarr images) as they are."""
    paths = []
    for pattern in patterns:
        if is_url(pattern):  # never a glob: "?" starts its query
            paths.append(pattern)
        elif not os.path.exists(pattern) and any(c in pattern for c in "*?["):
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                raise InputError(f"no file matches {pattern!r}")
            paths.extend(Path(m) for m in matches)
        else:
            paths.append(Path(pattern))
    return paths


def _check_device(args: argparse.Namespace):
    """The device, and that it computes the precision asked for (before anything loads)."""
    from ..model.checkpoint import pick_device
    from ..model.precision import PrecisionError, resolve_precision

    try:
        device = pick_device(args.device)
    except DeviceError as e:
        raise InputError(f"--device: {e}") from None
    try:
        resolve_precision(args.precision, device)
    except PrecisionError as e:
        raise InputError(f"--precision {args.precision}: {e}") from None
    return device


def _check_checkpoint(args: argparse.Namespace) -> None:
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise WeightsUnavailable(f"checkpoint file not found: {args.checkpoint}")


def _load_model(args: argparse.Namespace, device):
    _check_checkpoint(args)
    log(
        f"loading {args.model} (image size {args.image_size}, {args.precision}) on {device}",
        args.quiet,
    )
    return weights.load_model(
        args.model,
        args.checkpoint,
        device,
        image_size=args.image_size,
        cache_dir=args.cache_dir,
        progress=not args.quiet,
        precision=args.precision,
        compile=args.compile,
    )


# ------------------------------------------------------------------------------------- embed
def embed(args: argparse.Namespace) -> int:
    """Compute every frame's embedding of each stack into its store."""
    from tqdm.auto import tqdm

    from ..engine.embeddings import EmbeddingStore

    options = SegmentOptions(
        axis=args.axis,
        index=args.index,
        image_size=args.image_size,
        channel=args.channel,
        embeddings_dtype=args.embeddings_dtype,
        model=args.model,
    )
    stacks = _expand(args.stacks)
    for stack in stacks:
        if not is_url(stack) and not stack.exists():
            raise InputError(f"stack not found: {stack}")
    several = len(stacks) > 1
    stores = [embeddings_path(args.output, stack, several) for stack in stacks]
    for stack, store in zip(stacks, stores):  # everything, before the model loads
        source = check_stack(stack, options)
        if store.exists():
            check_store_for(store, source, options)
            if not EmbeddingStore.can_write(store):
                raise InputError(f"embeddings store {store} cannot be written (read-only)")
    device = _check_device(args)
    _check_checkpoint(args)
    model = _load_model(args, device)
    started = time.perf_counter()
    for stack, store in zip(stacks, stores):
        store.parent.mkdir(parents=True, exist_ok=True)
        with tqdm(desc=stack_stem(stack), unit="frame", disable=args.quiet) as bar:

            def advance(done, total, bar=bar):
                bar.total = total
                bar.update(1)

            try:
                encoded, total = embed_stack(model, stack, store, options, advance)
            except BaseException as e:  # Ctrl+C, SIGTERM: what is kept is a valid store
                if not isinstance(e, Exception) and store.is_dir():
                    e.args = (
                        f"{store} keeps the frames embedded so far (each one checked when "
                        "read); run the same embed again to complete it",
                    )
                raise
        print(f"{stack} -> {store}: {encoded} of {total} frames encoded ({total - encoded} there)")
    if several:
        print(f"done: {len(stacks)} stacks in {time.perf_counter() - started:.1f} s")
    return EXIT_OK
