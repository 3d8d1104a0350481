"""napari's numba triangulation compiled off the GUI thread when the widget opens.

napari outlines every shape with numba-compiled helpers, compiled on first use and cached in the
environment (``cache=True``): on a fresh install the first rectangle drawn — the *SAM2 window*
outline on a big slice, the user's first box — froze napari for seconds on the GUI thread. The
widget triangulates a tiny rectangle in a background thread instead, with napari's own shape
model, so that whatever napari's triangulation backend calls is compiled (or read from numba's
cache) before the user draws. numba compiles under one global lock and looks for an existing
compilation inside it, so a rectangle drawn meanwhile waits for the same compilation; it is
never compiled twice."""

from __future__ import annotations

import threading

import numpy as np

THREAD_NAME = "napari-sam2: napari shapes warm-up"
_started: threading.Thread | None = None
_lock = threading.Lock()


def _triangulate_a_rectangle() -> None:
    from napari.layers.shapes._accelerated_triangulate_dispatch import warmup_numba_cache
    from napari.layers.shapes._shapes_models import Rectangle

    warmup_numba_cache()  # what napari's first (empty) Shapes layer compiles
    Rectangle(np.array([[0, 0], [0, 4], [4, 4], [4, 0]], float))  # its outline: edge meshes


def warm_up_shapes() -> threading.Thread:
    """Start the background triangulation once per process; the thread (joinable) running it
    or done."""
    global _started
    with _lock:
        if _started is None:
            _started = threading.Thread(target=_quietly, name=THREAD_NAME, daemon=True)
            _started.start()
        return _started


def _quietly() -> None:
    try:
        _triangulate_a_rectangle()
    except Exception:  # noqa: BLE001 (a warm-up only: the first real rectangle compiles instead)
        pass
