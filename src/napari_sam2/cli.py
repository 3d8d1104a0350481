"""The ``napari-sam2`` command: segment and track objects in stacks without a viewer.

    napari-sam2 segment STACK [STACK ...] --prompts PROMPTS -o OUT [options]
    napari-sam2 download [MODEL ...]        # default sam2.1_hiera_tiny; "all" for all eight
    napari-sam2 view [IMAGE]                # napari with the SAM 2 widget and an image/sample
    napari-sam2 info                        # models cached, cache folder, device, versions

Exit codes: 0 success; 1 an I/O error (disk full, file-size limit) or an unexpected error (a bug:
rerun with --debug and report it); 2 bad usage or input (the message names the file, and the line
of a bad prompts row); 3 weights unavailable (offline, checksum, missing, empty or unreadable
checkpoint); 130 interrupted (Ctrl+C); 143 terminated (SIGTERM). Errors go to stderr as one
message; ``--debug`` adds the traceback. Interrupted or failed runs leave no partial output.
docs/cli.md has the details.
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import signal
import sys
import threading
import time
import traceback
from importlib import metadata
from pathlib import Path

from . import weights
from .engine.frames import FrameSourceError
from .engine.labels import LabelError
from .engine.prompts import PromptError
from .engine.video import frames_in
from .io import InputError, stack_stem
from .jobs import CheckedJob, JobResult, SegmentOptions, check_job, plan_jobs, run_job
from .model.checkpoint import CheckpointError, DeviceError
from .model.config import DEFAULT_MODEL, MODEL_NAMES

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_INPUT = 2
EXIT_WEIGHTS = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what shells report for a job ended by `kill`

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
        epilog="Exit codes: 0 ok, 1 I/O or unexpected error, 2 bad usage or input, 3 weights "
        "unavailable, 130 interrupted (Ctrl+C), 143 terminated (SIGTERM). See docs/cli.md.",
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
class Terminated(BaseException):
    """SIGTERM arrived (``kill``, ``timeout``, a batch scheduler ending the job). A
    BaseException, like KeyboardInterrupt, so that nothing catches it by accident and every
    ``finally`` on the way out cleans up (partial label files, spilled memory)."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2), already printed
        return e.code if isinstance(e.code, int) else EXIT_INPUT
    debug = getattr(args, "debug", False)
    previous = _handle_sigterm()
    try:
        return args.run(args)
    except KeyboardInterrupt:
        _print_error("interrupted; no partial output was kept", debug)
        return EXIT_INTERRUPTED
    except Terminated:
        _print_error("terminated (SIGTERM); no partial output was kept", debug)
        return EXIT_TERMINATED
    except (InputError, PromptError, FrameSourceError, LabelError, DeviceError) as e:
        _print_error(str(e), debug)
        return EXIT_INPUT
    except (weights.WeightsError, CheckpointError) as e:
        _print_error(str(e), debug)
        return EXIT_WEIGHTS
    except PermissionError as e:  # a file or folder the user may not read or write
        _print_error(f"permission denied: {e.filename or e}", debug)
        return EXIT_INPUT
    except OSError as e:  # a full disk, a file-size limit, a vanished network share
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        _print_error(
            f"I/O error{where}: {e.strerror or e}; the output being written was discarded and "
            "any previous output at that path is kept",
            debug,
        )
        return EXIT_UNEXPECTED
    except Exception as e:
        _print_error(
            f"unexpected error: {type(e).__name__}: {e}"
            + ("" if debug else "\n(run again with --debug for the traceback, and report it)"),
            debug,
        )
        return EXIT_UNEXPECTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _handle_sigterm():
    """Turn SIGTERM into :class:`Terminated` while a command runs (main thread only); returns
    the handler to restore, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _on_sigterm)


def _print_error(message: str, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _log(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, file=sys.stderr)


# --------------------------------------------------------------------------------------- segment
def _segment(args: argparse.Namespace) -> int:
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
    )
    to_folder = True if str(args.output).endswith(("/", os.sep)) else None
    jobs = plan_jobs(
        _expand(args.stacks),
        Path(args.prompts),
        Path(args.output),
        fmt=args.format,
        overwrite=args.overwrite,
        to_folder=to_folder,
    )
    device = _check_device(args.device)
    checked = [check_job(job, options) for job in jobs]  # everything, before the model loads
    _check_checkpoint(args)
    for job in jobs:
        job.output.parent.mkdir(parents=True, exist_ok=True)
    model = _load_model(args, device)
    started = time.perf_counter()
    frames = 0
    for i, job in enumerate(checked, start=1):
        if len(jobs) > 1:
            _log(f"[{i}/{len(jobs)}] {job.job.stack}", args.quiet)
        frames += _segment_one(model, job, options, args.quiet)
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


def _check_device(device: str | None):
    from .model.checkpoint import pick_device

    try:
        return pick_device(device)
    except DeviceError as e:
        raise InputError(f"--device: {e}") from None


def _check_checkpoint(args: argparse.Namespace) -> None:
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise WeightsUnavailable(f"checkpoint file not found: {args.checkpoint}")


def _load_model(args: argparse.Namespace, device):
    _check_checkpoint(args)
    _log(f"loading {args.model} (image size {args.image_size}) on {device}", args.quiet)
    return weights.load_model(
        args.model,
        args.checkpoint,
        device,
        image_size=args.image_size,
        cache_dir=args.cache_dir,
        progress=not args.quiet,
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
def _check_display() -> None:
    """napari needs a screen. Without one, Qt aborts the process (exit -6) with a message that
    does not say what to do: say it here, before anything loads."""
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return  # macOS and Windows always have a screen; an explicit Qt platform is trusted
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return
    raise InputError(
        "napari needs a display, and none was found (DISPLAY and WAYLAND_DISPLAY are unset). "
        "Run `view` in a desktop session (or over `ssh -X`), under a virtual screen with "
        "`xvfb-run -a napari-sam2 view ...`, or segment without a viewer with "
        "`napari-sam2 segment` (docs/cli.md)"
    )


def _view(args: argparse.Namespace) -> int:
    _check_display()
    if args.image and not Path(args.image).exists():
        raise InputError(f"image not found: {args.image}")
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
