"""On a big slice (tiles on), the outline of the native-resolution window that answered the last
click or box: a rectangle in a Shapes layer of its own (*SAM2 window*), toggled by a check box.
A part of :class:`~napari_sam2._qt.widget.SAM2Widget`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox

from .prompting import META

if TYPE_CHECKING:
    from .widget import SAM2Widget

WINDOW_NAME = "SAM2 window"


class WindowOutline:
    def __init__(self, widget: SAM2Widget) -> None:
        self.widget = widget
        self.layer = None
        self.last: tuple[int, tuple[int, int, int, int]] | None = None  # (frame, window)
        self.show = CheckBox(label="outline the window of the last click", value=True)
        self.show.tooltip = (
            "On big slices clicks are answered in a window at full resolution; show which"
        )
        self.show.changed.connect(self._toggle)

    def adopt(self, layer) -> None:
        """The *SAM2 window* layer of a resumed session (or None)."""
        self.layer, self.last = layer, None

    def update(self, frame: int, window) -> None:
        """``window`` (min_row, min_col, max_row, max_col) answered the last prompt on
        ``frame``."""
        self.last = (int(frame), tuple(int(v) for v in window))
        if self.show.value:
            self._draw()

    def forget(self) -> None:
        self.last = None

    def _toggle(self, on: bool) -> None:
        if self.layer is not None and self.layer in self.widget.viewer.layers:
            self.layer.visible = bool(on)
        if on:
            self._draw()

    def _draw(self) -> None:
        w = self.widget
        if w.session is None or self.last is None:
            return
        frame, (r0, c0, r1, c1) = self.last
        lead = list(w.geometry.index(frame))
        corners = [(r0, c0), (r0, c1), (r1, c1), (r1, c0)]  # pixel edges, not centres
        image = np.array([[*lead, r - 0.5, c - 0.5] for r, c in corners])
        if self.layer is None or self.layer not in w.viewer.layers:
            self.layer = self._make_layer()
        world = [w.image_layer.data_to_world(p) for p in image]
        rectangle = np.array([self.layer.world_to_data(p) for p in world])
        self.layer.data = []
        self.layer.add_rectangles([rectangle], edge_color="cyan", face_color="transparent")
        self.layer.visible = True

    def _make_layer(self):
        w = self.widget
        ndim = w.geometry.ndim_spatial
        active = w.viewer.layers.selection.active  # adding a layer selects it: keep the clicks'
        layer = w.viewer.add_shapes(
            ndim=ndim,
            name=WINDOW_NAME,
            edge_color="cyan",
            face_color="transparent",
            edge_width=max(2.0, round(min(w.geometry.spatial_shape) / 300)),
            opacity=0.8,
            metadata={META: {"image": w.image_layer.name, "role": "window"}},
            scale=w.image_layer.scale[:ndim],
            translate=w.image_layer.translate[:ndim],
        )
        if active is not None and active in w.viewer.layers:
            w.viewer.layers.selection.active = active
        return layer
