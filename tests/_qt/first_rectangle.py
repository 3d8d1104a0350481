"""Run by test_napari_warm_up.py in a fresh numba cache: open the widget, wait for its warm-up,
then draw the first rectangles (the *SAM2 window* outline, a user's box); print as JSON what
numba compiled (or read from its cache), on which thread, before and after the drawing."""

from __future__ import annotations

import json
import threading

import napari
import numpy as np
from napari.layers.shapes import _accelerated_triangulate_numba as napari_numba
from numba.core import event
from numba.core.registry import CPUDispatcher
from qtpy.QtWidgets import QApplication


class Compiles(event.Listener):
    """Every numba compilation: (function, thread)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def on_start(self, e) -> None:
        name = getattr(e.data["dispatcher"], "__name__", "?")
        self.seen.append((name, threading.current_thread().name))

    def on_end(self, e) -> None:
        pass


def signatures() -> dict[str, list[str]]:
    return {
        name: [str(s) for s in f.signatures]
        for name, f in vars(napari_numba).items()
        if isinstance(f, CPUDispatcher) and f.signatures
    }


compiles = Compiles()
event.register("numba:compile", compiles)
viewer = napari.Viewer(show=False)
viewer.add_image(np.zeros((3, 64, 64), np.uint16), name="cells")
from napari_sam2._qt.widget import SAM2Widget  # noqa: E402

widget = SAM2Widget(viewer)
for thread in threading.enumerate():
    if thread.name.startswith("napari-sam2"):
        thread.join(timeout=300)
QApplication.processEvents()
before, compiled_before = signatures(), list(compiles.seen)
rectangle = np.array([[0, 0, 0], [0, 0, 4], [0, 4, 4], [0, 4, 0]], float)
outline = viewer.add_shapes(ndim=3, name="SAM2 window", face_color="transparent")
outline.add_rectangles([rectangle], edge_color="cyan", face_color="transparent")
box = viewer.add_shapes([rectangle * 2], shape_type="rectangle", face_color="transparent")
box.selected_data = {0}
QApplication.processEvents()
print(
    json.dumps(
        {
            "before": before,
            "after": signatures(),
            "compiled_before": compiled_before,
            "compiled_drawing": compiles.seen[len(compiled_before) :],
        }
    )
)
viewer.close()  # (a viewer left open with the widget may crash the interpreter's exit)
