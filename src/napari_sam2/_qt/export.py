"""Exporting SAM2 labels from the widget: the tracked slices as a TIFF (OME-TIFF pixel sizes) or
an OME-Zarr labels group, with the image layer's pixel sizes and units, written by the
command line's own writer (:func:`napari_sam2.io.outputs.label_output`), and the object names
beside it (``<name>.objects.csv``: id, name). The slices are read and written in a worker,
one at a time, so that a long stack never holds up the viewer."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import FileEdit, PushButton

from ..engine.labels import label_dtype_for
from ..io.ome import Geometry, label_geometry
from ..io.outputs import label_output

if TYPE_CHECKING:
    from .widget import SAM2Widget


class LabelExport:
    """The *Export labels* controls of the Session tab (``widgets``)."""

    def __init__(self, widget: SAM2Widget) -> None:
        self.widget = widget
        self.path = FileEdit(
            label="export to", mode="w", filter="*.tif *.tiff *.ome.zarr *.zarr", value=""
        )
        self.path.tooltip = (
            "labels.tif (OME-TIFF), labels.ome.zarr (OME-Zarr labels) or "
            "IMAGE.ome.zarr/labels/NAME (into an OME-Zarr image), with the image's pixel sizes; "
            "object names go to "
            "<name>.objects.csv beside it (and into OME-Zarr properties)"
        )
        self.button = PushButton(text="Export labels")
        self.button.changed.connect(self.export)
        self.widgets = [self.path, self.button]

    def export(self, *_):
        """Write the tracked slices of SAM2 labels to the chosen file (replacing it), in a
        worker: the slices are read and written one at a time off the event loop. Returns the
        worker (None when refused)."""
        w = self.widget
        path = self.path.value
        if w.session is None or w.labels_layer is None:
            w.show_problem("Start a session and segment something before exporting its labels.")
            return None
        if path in (None, "") or str(path) in ("", "."):
            w.show_problem("Choose a file to export to: labels.tif or labels.ome.zarr.")
            return None
        path = Path(path)
        frames = w.label_view()
        ids = sorted(set(w.used_ids()) | {i for f in w._labelled.values() for i in f})
        names = {i: w.names[i] for i in ids if w.names.get(i)}
        shape = (w.geometry.num_frames, *w.geometry.spatial_shape)
        dtype, geometry = label_dtype_for(max(ids, default=1)), self.geometry()

        def write():  # (a bad name, a folder that cannot be written, a full disk: the status)
            with label_output(
                path,
                shape,
                dtype,
                overwrite=True,
                geometry=geometry,
                names=names,
                source="napari-sam2 widget",
            ) as out:
                for t in range(shape[0]):
                    out[t] = np.asarray(frames[t])
            return write_names(path, ids, names)

        def written(names_file) -> None:
            also = f" and the object names to {names_file.name}" if names_file else ""
            w.feedback.done(f"Labels of {shape[0]} slice(s) exported to {path}{also}.", notify=True)

        w.feedback.say(f"Exporting the labels of {shape[0]} slice(s) to {path}…")
        return w.run(write, returned=written)

    def geometry(self) -> Geometry:
        """The axes, pixel sizes and units of the exported (slices, Y, X) volume: the image
        layer's scale and units on its tracked axis and its last two."""
        w = self.widget
        image, geometry = w.image_layer, w.geometry
        ndim = image.ndim  # (napari's ndim leaves out RGB channels)
        scale = [float(s) for s in image.scale[:ndim]]
        units = [_unit(u) for u in getattr(image, "units", [None] * ndim)[:ndim]]
        labels = [str(a).lower() for a in w.viewer.dims.axis_labels[-ndim:]]
        axes = "".join(a if len(a) == 1 and a in "tzc" else "?" for a in labels[:-2]) + "yx"
        keep = [geometry.stack_axis, ndim - 2, ndim - 1]
        if geometry.stack_axis is None:
            keep = [ndim - 2, ndim - 1]
        elif axes[geometry.stack_axis] == "?":
            axes = axes[: geometry.stack_axis] + "z" + axes[geometry.stack_axis + 1 :]
        known = [s if u is not None or s != 1.0 else None for s, u in zip(scale, units)]
        return label_geometry(Geometry(axes, tuple(known), tuple(units)), keep)


def write_names(path: Path, ids: list[int], names: dict[int, str]) -> Path | None:
    """``<name>.objects.csv`` with every object's id and name (None when none is named)."""
    if not any(names.get(i) for i in ids):
        return None
    stem = path.name.removesuffix(".ome.zarr").removesuffix(path.suffix)
    target = path.with_name(f"{stem}.objects.csv")
    with open(target, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["obj_id", "name"])
        for i in ids:
            writer.writerow([i, names.get(i, "")])
    return target


def _unit(unit) -> str | None:
    """A napari layer unit (pint) as a name, None for pixels (no physical size)."""
    if unit is None:
        return None
    text = str(unit)
    return None if text in ("pixel", "px", "") else text
