"""``napari-sam2 segment``: plan and check every stack, load the model once, track each stack
into its label file, print a summary per stack (the work itself is :mod:`napari_sam2.jobs`)."""

from __future__ import annotations

import argparse
import glob
import os
import time
from pathlib import Path

from .. import weights
from ..engine.video import frames_in
from ..io import InputError, stack_stem
from ..jobs import (
    CheckedJob,
    JobResult,
    SegmentOptions,
    check_job,
    check_stack,
    check_store_for,
    embed_stack,
    embeddings_path,
    plan_jobs,
    run_job,
)
from ..model.checkpoint import DeviceError
from .common import EXIT_OK, WeightsUnavailable, log


def segment(args: argparse.Namespace) -> int:
    options = SegmentOptions(
        direction=args.direction,
        axis=args.axis,
        index=args.index,
        start=args.start,
        stop=args.stop,
        image_size=args.image_size,
        channel=args.channel,
        overwrite=args.overwrite,
        spill_dir=args.spill_dir,
        prompt_frame=args.prompt_frame,
        auto_frame=args.auto,
        auto=_auto_options(args),
        embeddings_dtype=args.embeddings_dtype,
        model=args.model,
    )
    if (args.prompts is None) == (args.auto is None):
        raise InputError(
            "give either --prompts (clicks, boxes or a label image) or --auto FRAME (segment "
            "everything on a frame)" + (", not both" if args.auto is not None else "")
        )
    to_folder = True if str(args.output).endswith(("/", os.sep)) else None
    jobs = plan_jobs(
        _expand(args.stacks),
        None if args.prompts is None else Path(args.prompts),
        Path(args.output),
        fmt=args.format,
        overwrite=args.overwrite,
        to_folder=to_folder,
        embeddings=None if args.embeddings is None else Path(args.embeddings),
    )
    device = _check_device(args)
    checked = [check_job(job, options) for job in jobs]  # everything, before the model loads
    _check_checkpoint(args)
    for job in jobs:
        job.output.parent.mkdir(parents=True, exist_ok=True)
    model = _load_model(args, device)
    started = time.perf_counter()
    frames = 0
    for i, job in enumerate(checked, start=1):
        if len(jobs) > 1:
            log(f"[{i}/{len(jobs)}] {job.job.stack}", args.quiet)
        frames += _segment_one(model, job, options, args.quiet)
    if len(jobs) > 1:
        elapsed = time.perf_counter() - started
        print(f"done: {len(jobs)} stacks, {frames} frames in {elapsed:.1f} s")
    return EXIT_OK


def _auto_options(args: argparse.Namespace) -> dict:
    """The AutomaticMaskGenerator options of ``--auto``, checked now (before the model)."""
    options = {
        "points_per_side": args.points_per_side,
        "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_score_thresh,
    }
    if args.auto is not None:
        from ..engine.automatic import check_options

        try:
            check_options(**options)
        except ValueError as e:
            raise InputError(f"--auto: {e}") from None
    return options


def _expand(patterns: list[str]) -> list[Path]:
    """Stack paths, with glob patterns expanded here for shells that do not."""
    paths = []
    for pattern in patterns:
        if not os.path.exists(pattern) and any(c in pattern for c in "*?["):
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


def _segment_one(model, checked: CheckedJob, options: SegmentOptions, quiet: bool) -> int:
    """Track one stack into its label file; print its summary; return the frames tracked."""
    from tqdm.auto import tqdm

    job = checked.job
    total = frames_in(list(checked.passes))
    with tqdm(total=total, desc=stack_stem(job.stack), unit="frame", disable=quiet) as bar:
        result = run_job(model, checked, options, lambda done, _total: bar.update(1))
    _print_summary(result)
    return len(result.tracked_frames)


def _print_summary(result: JobResult) -> None:
    tracked, elapsed = result.tracked_frames, result.seconds
    frames = f"{len(tracked)} frames ({tracked[0]}-{tracked[-1]})" if tracked else "0 frames"
    print(
        f"{result.job.stack} -> {result.job.output}: {len(result.obj_ids)} objects, {frames} of "
        f"{result.num_frames}, {elapsed:.1f} s ({elapsed / max(1, len(tracked)):.2f} s/frame)"
    )
    print(f"  {'object':>8} {'voxels':>12} {'frames':>7}")
    for obj_id in result.obj_ids:
        n, f = result.counts.get(obj_id, (0, 0))
        print(f"  {obj_id:>8} {n:>12,} {f:>7}" + ("  (not found)" if n == 0 else ""))
    if result.dropped:
        print(
            f"  not tracked: object(s) {list(result.dropped)} of the label image are too small "
            "for the model's input size (use a larger --image-size, or click them)"
        )


# ------------------------------------------------------------------------------------- embed
def embed(args: argparse.Namespace) -> int:
    """Compute every frame's embedding of each stack into its store."""
    from tqdm.auto import tqdm

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
        if not stack.exists():
            raise InputError(f"stack not found: {stack}")
    several = len(stacks) > 1
    stores = [embeddings_path(Path(args.output), stack, several) for stack in stacks]
    for stack, store in zip(stacks, stores):  # everything, before the model loads
        source = check_stack(stack, options)
        if store.exists():
            check_store_for(store, source, options)
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

            encoded, total = embed_stack(model, stack, store, options, advance)
        print(f"{stack} -> {store}: {encoded} of {total} frames encoded ({total - encoded} there)")
    if several:
        print(f"done: {len(stacks)} stacks in {time.perf_counter() - started:.1f} s")
    return EXIT_OK
