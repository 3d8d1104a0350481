"""The ``napari-sam2`` command: segment and track objects in stacks without a viewer.

    napari-sam2 segment STACK [STACK ...] --prompts PROMPTS -o OUT [options]
    napari-sam2 download [MODEL ...]        # default sam2.1_hiera_tiny; "all" for all eight
    napari-sam2 view [IMAGE]                # napari with the SAM 2 widget and an image/sample
    napari-sam2 info                        # models cached, cache folder, device, versions

Exit codes: 0 success; 1 unexpected error (a bug: rerun with --debug and report it); 2 bad usage
or input (the message names the file, and the line of a bad prompts row); 3 weights unavailable
(offline, checksum, missing or unreadable checkpoint); 130 interrupted (Ctrl+C). Errors go to
stderr as one message; ``--debug`` adds the traceback. docs/cli.md has the details.
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from . import weights
from .engine.frames import FrameSourceError
from .engine.prompts import PromptError
from .io import (
    InputError,
    add_prompts,
    label_counts,
    label_dtype,
    label_output,
    open_stack,
    read_prompts,
    stack_stem,
)
from .model.checkpoint import CheckpointError
from .model.config import DEFAULT_MODEL, MODEL_NAMES

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_INPUT = 2
EXIT_WEIGHTS = 3
EXIT_INTERRUPTED = 130

PROG = "napari-sam2"


class WeightsUnavailable(weights.WeightsError):
    """A --checkpoint that does not exist."""


# ------------------------------------------------------------------------------------- arguments
def _image_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0 or value % 64:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 64, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the traceback of an error",
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Segment and track objects in image stacks with SAM 2 (napari-sam2).",
        epilog="Exit codes: 0 ok, 1 unexpected error, 2 bad usage or input, 3 weights "
        "unavailable, 130 interrupted. See docs/cli.md.",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    seg = commands.add_parser(
        "segment",
        parents=[debug],
        help="track prompted objects through stacks into label volumes",
        description="Track the objects prompted in a CSV file through each stack and write a "
        "label volume (one label value per object id) of the stack's (T, H, W) shape.",
    )
    seg.add_argument(
        "stacks",
        nargs="+",
        metavar="STACK",
        help="TIFF / OME-TIFF, .npy or zarr stack; glob patterns are expanded (quote them)",
    )
    seg.add_argument(
        "--prompts",
        "-p",
        required=True,
        metavar="PROMPTS",
        help="CSV of clicks/boxes (docs/cli.md), used for every stack; or a folder holding "
        "<stack name>.csv for each stack",
    )
    seg.add_argument(
        "--output",
        "-o",
        required=True,
        metavar="OUT",
        help="label file (.tif or .zarr) for one stack; a folder for several "
        "(<stack name>_labels.tif in it)",
    )
    seg.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        choices=MODEL_NAMES,
        metavar="MODEL",
        help=f"SAM 2 model (default {DEFAULT_MODEL}; one of {', '.join(MODEL_NAMES)})",
    )
    seg.add_argument(
        "--checkpoint", metavar="PATH", help="official .pt file (default: download / cache)"
    )
    seg.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: the best found)")
    seg.add_argument(
        "--direction",
        default="both",
        choices=("forward", "backward", "both"),
        help="propagate from the prompted frames forward, backward or both (default)",
    )
    seg.add_argument(
        "--axis",
        type=int,
        help="for data with two axes before (Y, X), e.g. (T, Z, Y, X): the one to track (0/1)",
    )
    seg.add_argument(
        "--index", type=int, help="with --axis: the position on the other axis (e.g. the z)"
    )
    seg.add_argument("--start", type=int, help="first frame of the range to track")
    seg.add_argument("--stop", type=int, help="last frame of the range to track (inclusive)")
    seg.add_argument(
        "--image-size",
        type=_image_size,
        default=1024,
        metavar="N",
        help="network input side, a multiple of 64 (default 1024, as trained): smaller is "
        "faster and less accurate",
    )
    seg.add_argument(
        "--channel", type=int, default=0, help="channel of multichannel data (default 0)"
    )
    seg.add_argument(
        "--format",
        choices=("tif", "zarr"),
        default="tif",
        help="output format when OUT is a folder (default tif)",
    )
    seg.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    seg.add_argument(
        "--spill-dir", metavar="DIR", help="where tracking memory of old frames is kept on disk"
    )
    _add_cache_dir(seg)
    seg.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    seg.set_defaults(run=_segment)

    down = commands.add_parser(
        "download",
        parents=[debug],
        help="download checkpoints into the cache",
        description="Download official checkpoints into the cache (for offline use later).",
    )
    down.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        default=[DEFAULT_MODEL],
        help=f"model names, or 'all' (default {DEFAULT_MODEL})",
    )
    down.add_argument(
        "--no-verify",
        action="store_true",
        help=f"skip the SHA-256 check (also: {weights.SKIP_HASH_ENV}=1)",
    )
    _add_cache_dir(down)
    down.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    down.set_defaults(run=_download)

    view = commands.add_parser(
        "view",
        parents=[debug],
        help="open napari with the SAM 2 widget and an image (default: a sample)",
        description="Open napari with the SAM 2 widget docked and an image loaded: a file "
        "napari can read, or one of the package's synthetic samples. Without --checkpoint the "
        "official weights are fetched first (downloaded on first use).",
    )
    view.add_argument("image", nargs="?", help="a file to open (default: the sample)")
    view.add_argument(
        "--sample",
        choices=["stack", "timelapse"],
        default="stack",
        help="which synthetic sample to open when no file is given",
    )
    view.add_argument("--model", default=DEFAULT_MODEL, choices=MODEL_NAMES)
    view.add_argument("--checkpoint", metavar="PATH", help="official .pt file (skips download)")
    _add_cache_dir(view)
    view.set_defaults(run=_view)

    info = commands.add_parser(
        "info", parents=[debug], help="models cached, cache folder, device, versions"
    )
    _add_cache_dir(info)
    info.set_defaults(run=_info)
    return parser


def _add_cache_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        help=f"checkpoint cache (default: ${weights.CACHE_ENV} or the user cache folder)",
    )


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2), already printed
        return e.code if isinstance(e.code, int) else EXIT_INPUT
    debug = getattr(args, "debug", False)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        _print_error("interrupted; no partial output was kept", debug)
        return EXIT_INTERRUPTED
    except (InputError, PromptError, FrameSourceError) as e:
        _print_error(str(e), debug)
        return EXIT_INPUT
    except (weights.WeightsError, CheckpointError) as e:
        _print_error(str(e), debug)
        return EXIT_WEIGHTS
    except Exception as e:
        _print_error(
            f"unexpected error: {type(e).__name__}: {e}"
            + ("" if debug else "\n(run again with --debug for the traceback, and report it)"),
            debug,
        )
        return EXIT_UNEXPECTED


def _print_error(message: str, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _log(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, file=sys.stderr)


# --------------------------------------------------------------------------------------- segment
@dataclass(frozen=True)
class _Job:
    stack: Path
    prompts: Path
    output: Path


def _segment(args: argparse.Namespace) -> int:
    jobs = _plan_jobs(args)
    device = _check_device(args.device)
    for job in jobs:  # everything that can be checked without the model, before it runs
        stack = open_stack(job.stack, axis=args.axis, index=args.index)
        try:
            read_prompts(job.prompts, stack)
        finally:
            stack.close()
    model = _load_model(args, device)
    started = time.perf_counter()
    frames = 0
    for i, job in enumerate(jobs, start=1):
        if len(jobs) > 1:
            _log(f"[{i}/{len(jobs)}] {job.stack}", args.quiet)
        frames += _segment_one(model, job, args)
    if len(jobs) > 1:
        elapsed = time.perf_counter() - started
        print(f"done: {len(jobs)} stacks, {frames} frames in {elapsed:.1f} s")
    return EXIT_OK


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


def _plan_jobs(args: argparse.Namespace) -> list[_Job]:
    stacks = _expand(args.stacks)
    for s in stacks:
        if not s.exists():
            raise InputError(f"stack not found: {s}")
    prompts = Path(args.prompts)
    if not prompts.exists():
        raise InputError(f"prompts file not found: {prompts}")
    out = Path(args.output)
    to_folder = (
        len(stacks) > 1
        or str(args.output).endswith(("/", os.sep))
        or (out.is_dir() and out.suffix.lower() != ".zarr")
    )
    jobs = []
    seen: dict[Path, Path] = {}
    for stack in stacks:
        stem = stack_stem(stack)
        csv = prompts / f"{stem}.csv" if prompts.is_dir() else prompts
        if not csv.is_file():
            raise InputError(f"no prompts for {stack}: {csv} not found")
        target = out / f"{stem}_labels.{args.format}" if to_folder else out
        if target in seen:
            raise InputError(
                f"{seen[target]} and {stack} would both write {target}; give stacks distinct names"
            )
        seen[target] = stack
        if target.resolve() == stack.resolve():
            raise InputError(f"output {target} is the input stack itself; choose another name")
        if target.exists() and not args.overwrite:
            raise InputError(f"output {target} exists; pass --overwrite to replace it")
        if not to_folder and target.suffix.lower() not in (".tif", ".tiff", ".zarr"):
            raise InputError(f"output {target}: the name must end in .tif, .tiff or .zarr")
        jobs.append(_Job(stack, csv, target))
    if to_folder:
        out.mkdir(parents=True, exist_ok=True)
    return jobs


def _check_device(device: str | None):
    import torch

    from .model.checkpoint import pick_device

    try:
        chosen = pick_device(device)
    except RuntimeError as e:
        raise InputError(f"--device {device!r} is not a device: {e}") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device {device}: Apple MPS is not available on this machine")
    return chosen


def _load_model(args: argparse.Namespace, device):
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise WeightsUnavailable(f"checkpoint file not found: {args.checkpoint}")
    _log(f"loading {args.model} (image size {args.image_size}) on {device}", args.quiet)
    return weights.load_model(
        args.model,
        args.checkpoint,
        device,
        image_size=args.image_size,
        cache_dir=args.cache_dir,
        progress=not args.quiet,
    )


def _segment_one(model, job: _Job, args: argparse.Namespace) -> int:
    """Track one stack into its label file; print its summary; return the frames tracked."""
    from tqdm.auto import tqdm

    from .engine.labels import track_to_labels
    from .engine.video import VideoTracker, frames_in

    started = time.perf_counter()
    stack = open_stack(job.stack, axis=args.axis, index=args.index)
    tracker = None
    try:
        prompts = read_prompts(job.prompts, stack)
        obj_ids = sorted({p.obj_id for p in prompts})
        tracker = VideoTracker(model, stack.frames, channel=args.channel, spill_dir=args.spill_dir)
        add_prompts(tracker, prompts, job.prompts)
        try:
            passes = tracker.plan(args.direction, args.start, args.stop)
        except ValueError as e:
            raise InputError(f"{job.stack}: {e}") from None
        total = frames_in(passes)
        tracked = {
            f for first, last, _ in passes for f in range(min(first, last), max(first, last) + 1)
        }
        dtype = label_dtype(max(obj_ids))
        with (
            label_output(job.output, stack.label_shape, dtype, overwrite=args.overwrite) as labels,
            tqdm(total=total, desc=stack_stem(job.stack), unit="frame", disable=args.quiet) as bar,
        ):
            track_to_labels(
                tracker,
                labels,
                direction=args.direction,
                start=args.start,
                stop=args.stop,
                progress=lambda done, _total: bar.update(1),
            )
            voxels, present = label_counts(labels, max(obj_ids) + 1)
    finally:
        if tracker is not None:
            tracker.close()
        stack.close()
    elapsed = time.perf_counter() - started
    _print_summary(job, stack, obj_ids, sorted(tracked), voxels, present, elapsed)
    return len(tracked)


def _print_summary(job, stack, obj_ids, tracked, voxels, present, elapsed) -> None:
    frames = f"{len(tracked)} frames ({tracked[0]}-{tracked[-1]})" if tracked else "0 frames"
    print(
        f"{job.stack} -> {job.output}: {len(obj_ids)} objects, {frames} of {stack.num_frames}, "
        f"{elapsed:.1f} s ({elapsed / max(1, len(tracked)):.2f} s/frame)"
    )
    print(f"  {'object':>8} {'voxels':>12} {'frames':>7}")
    for obj_id in obj_ids:
        n = int(voxels[obj_id]) if obj_id < len(voxels) else 0
        f = int(present[obj_id]) if obj_id < len(present) else 0
        print(f"  {obj_id:>8} {n:>12,} {f:>7}" + ("  (not found)" if n == 0 else ""))


# -------------------------------------------------------------------------------------- download
def _download(args: argparse.Namespace) -> int:
    names = list(MODEL_NAMES) if "all" in args.models else args.models
    unknown = [n for n in names if n not in weights.REGISTRY]
    if unknown:
        raise InputError(
            f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODEL_NAMES)} or all"
        )
    failed = []
    for name in names:
        was_cached = weights.is_cached(name, args.cache_dir)
        try:
            path = weights.fetch(
                name,
                cache_dir=args.cache_dir,
                progress=not args.quiet,
                verify=False if args.no_verify else None,
            )
        except weights.WeightsError as e:
            print(f"{PROG}: error: {name}: {e}", file=sys.stderr)
            failed.append(name)
            continue
        print(f"{name}: {path}" + (" (already cached)" if was_cached else " (downloaded)"))
    return EXIT_WEIGHTS if failed else EXIT_OK


# ------------------------------------------------------------------------------------------ view
def _view(args: argparse.Namespace) -> int:
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = str(weights.fetch(args.model, cache_dir=args.cache_dir))
    elif not Path(checkpoint).is_file():
        raise WeightsUnavailable(f"checkpoint file not found: {checkpoint}")
    import napari

    from ._qt.widget import SAM2Widget
    from ._sample_data import make_sample_stack, make_sample_timelapse

    viewer = napari.Viewer(title="napari-sam2")
    if args.image:
        viewer.open(args.image)
    else:
        make = make_sample_stack if args.sample == "stack" else make_sample_timelapse
        for data, meta, _ in make():
            viewer.add_image(data, **meta)
    widget = SAM2Widget(viewer)
    widget.model_name.value = args.model
    widget.checkpoint.value = checkpoint
    viewer.window.add_dock_widget(widget, name="SAM 2", area="right")
    napari.run()
    return EXIT_OK


# ------------------------------------------------------------------------------------------ info
def _version(package: str = "napari-sam2") -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _info(args: argparse.Namespace) -> int:
    import torch

    from .model.checkpoint import pick_device

    cache = weights.get_cache_dir(args.cache_dir)
    source = (
        "--cache-dir"
        if args.cache_dir
        else f"${weights.CACHE_ENV}"
        if os.environ.get(weights.CACHE_ENV)
        else "default"
    )
    mps = getattr(torch.backends, "mps", None)
    print(f"napari-sam2 {_version()}")
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, "
        + ", ".join(f"{p} {_version(p)}" for p in ("numpy", "tifffile", "zarr", "napari"))
    )
    print(
        f"device: {pick_device()} (CUDA: {'yes' if torch.cuda.is_available() else 'no'}, "
        f"MPS: {'yes' if mps is not None and mps.is_available() else 'no'})"
    )
    print(f"cache: {cache} ({source})")
    print("models:")
    for name in MODEL_NAMES:
        entry = weights.REGISTRY[name]
        size = f"{entry.size / 1e6:,.0f} MB" if entry.size else "size ?"
        path = weights.cached_path(name, args.cache_dir)
        state = f"cached      {path}" if path.is_file() else f"not cached  {entry.url}"
        print(f"  {name:<24} {size:>8}  {state}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
