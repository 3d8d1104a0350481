"""``napari-sam2 download``, ``view`` and ``info``."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import signal
import sys
from importlib import metadata
from pathlib import Path

from .. import weights
from ..io import InputError
from ..model.config import MODEL_NAMES
from .common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_WEIGHTS,
    PROG,
    WeightsUnavailable,
)


def download(args: argparse.Namespace) -> int:
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
        f"`xvfb-run -a {this_command()} view ...`, or segment without a viewer with "
        f"`{PROG} segment` (docs/cli.md)"
    )


def _read_image(path: str) -> list:
    """The layer data napari's readers make of ``path``; a file or folder none of them opens
    (a text file, a CSV that is not points, a folder of no images) is bad input, said now."""
    from napari.plugins import _initialize_plugins
    from napari.plugins.io import read_data_with_plugins

    _initialize_plugins()
    try:
        layers, _ = read_data_with_plugins([path], plugin=None, stack=False)
    except PermissionError:
        raise
    except Exception as e:  # readers' own errors: ValueError, a plugin's exception
        reason = str(e) or type(e).__name__
        layers, error = None, reason
    else:
        error = "no reader returned data"
    if not layers:
        raise InputError(
            f"{path}: napari cannot open it as an image ({error}); give an image file napari "
            "reads (TIFF, PNG, JPEG, a zarr folder, ...), or no file for the sample"
        )
    return layers


def this_command() -> str:
    """The command that runs this program, as a shell can run it from anywhere: the script's
    full path (``napari-sam2`` is often only in a virtual environment's ``bin``), else
    ``python -m``."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.name == PROG and script.is_file():
        return shlex.quote(str(script.resolve()))
    return f"{shlex.quote(sys.executable)} -m napari_sam2.cli"


def _close_on_signals(viewer) -> dict:
    """Ctrl+C (SIGINT) and SIGTERM close napari. Qt's event loop runs no Python code, so
    Python would never see the signal: a timer runs a no-op every 200 ms to let it. Returns a
    dict whose ``"signal"`` is the one received, if any."""
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    received: dict = {}

    def close(signum, frame) -> None:
        if "signal" in received:
            return
        received["signal"] = signum
        print(f"{PROG}: {signal.Signals(signum).name}: closing napari", file=sys.stderr)
        QTimer.singleShot(0, quit_)  # from the event loop (which may not have started yet)

    def quit_() -> None:
        try:
            viewer.close()
        finally:
            QApplication.quit()

    received["previous"] = {s: signal.signal(s, close) for s in (signal.SIGINT, signal.SIGTERM)}
    timer = QTimer()
    timer.timeout.connect(lambda: None)
    timer.start(200)
    received["timer"] = timer
    return received


def _check_napari() -> None:
    """``view`` needs napari and a Qt binding, which the core install leaves out."""
    import importlib

    missing = []
    for name in ("napari", "qtpy"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise InputError(
            f"`view` needs {' and '.join(missing)}, which are not installed: "
            "pip install 'napari-sam2[all]' (napari and PyQt6) or 'napari-sam2[napari]' (napari, "
            f"with your own Qt binding); `{PROG} segment` and `batch` work without them"
        )


def view(args: argparse.Namespace) -> int:
    _check_napari()
    _check_display()
    if args.image and not Path(args.image).exists():
        raise InputError(f"image not found: {args.image}")
    layers = _read_image(args.image) if args.image else None  # before any download
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = str(weights.fetch(args.model, cache_dir=args.cache_dir))
    elif not Path(checkpoint).is_file():
        raise WeightsUnavailable(f"checkpoint file not found: {checkpoint}")
    import napari

    from .._qt.widget import SAM2Widget
    from .._sample_data import make_sample_stack, make_sample_timelapse
    from .._sample_lineage import make_sample_lineage

    viewer = napari.Viewer(title="napari-sam2")
    from napari.layers import Layer

    if layers is not None:
        for layer_data in layers:
            data, meta, kind = (*layer_data, None, None)[:3]
            meta = {"name": Path(args.image).stem, **(meta or {})}
            viewer.add_layer(Layer.create(data, meta, kind or "image"))
    else:
        samples = {
            "stack": make_sample_stack,
            "timelapse": make_sample_timelapse,
            "lineage": make_sample_lineage,
        }
        for data, meta, kind in samples[args.sample]():
            viewer.add_layer(Layer.create(data, meta, kind))
    widget = SAM2Widget(viewer)
    widget.model_name.value = args.model
    widget.checkpoint.value = checkpoint
    widget.input_size.value = args.input_size
    widget.device.value = args.device
    widget.precision.value = args.precision
    viewer.window.add_dock_widget(widget, name="SAM 2", area="right")
    stop = _close_on_signals(viewer)
    print(f"{PROG} view: napari is open; close its window (or press Ctrl+C here) to quit.")
    sys.stdout.flush()
    try:
        napari.run()
    finally:
        stop["timer"].stop()
        for s, handler in stop["previous"].items():
            signal.signal(s, handler)
    if "signal" in stop:
        return EXIT_INTERRUPTED if stop["signal"] == signal.SIGINT else EXIT_TERMINATED
    return EXIT_OK


# ------------------------------------------------------------------------------------------ info
def version(package: str = "napari-sam2") -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def info(args: argparse.Namespace) -> int:
    import torch

    from ..model.checkpoint import pick_device

    cache = weights.get_cache_dir(args.cache_dir)
    source = (
        "--cache-dir"
        if args.cache_dir
        else f"${weights.CACHE_ENV}"
        if os.environ.get(weights.CACHE_ENV)
        else "default"
    )
    mps = getattr(torch.backends, "mps", None)
    print(f"napari-sam2 {version()}")
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, "
        + ", ".join(f"{p} {version(p)}" for p in ("numpy", "tifffile", "zarr", "napari"))
    )
    print(
        f"device: {pick_device()} (CUDA: {'yes' if torch.cuda.is_available() else 'no'}, "
        f"MPS: {'yes' if mps is not None and mps.is_available() else 'no'})"
    )
    from ..model.precision import native_bf16_cpu

    bf16 = "yes (use --precision bf16)" if native_bf16_cpu() else "no (bf16 would be emulated)"
    print(f"native bf16 on this CPU: {bf16}")
    print(f"cache: {cache} ({source})")
    print("models:")
    for name in MODEL_NAMES:
        entry = weights.REGISTRY[name]
        size = f"{entry.size / 1e6:,.0f} MB" if entry.size else "size ?"
        path = weights.cached_path(name, args.cache_dir)
        state = f"cached      {path}" if path.is_file() else f"not cached  {entry.url}"
        print(f"  {name:<24} {size:>8}  {state}")
    return EXIT_OK
