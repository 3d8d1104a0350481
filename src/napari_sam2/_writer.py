"""napari's *File → Save Layers* for Labels layers (the npe2 writer in napari.yaml): a TIFF with
OME pixel sizes, a zarr array, an OME-Zarr labels group, or ``IMAGE.ome.zarr/labels/NAME``,
written by :func:`napari_sam2.io.outputs.label_output` with the layer's scale, translation,
units and axis labels. Needs no Qt: napari hands over the layer's data and attributes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .engine.labels import label_dtype_for
from .io.ome import Geometry, label_geometry
from .io.outputs import label_output


def write_labels(path: str, data, meta: dict) -> list[str]:
    """Write one Labels layer (2-D or 3-D; its ``scale``, ``translate``, ``units``,
    ``axis_labels`` and ``name`` from ``meta``) at ``path``, replacing what is there; returns
    the path written. Raises ValueError for data napari-sam2 cannot store."""
    data = data[0] if isinstance(data, list) else data  # a multiscale layer: its finest level
    ndim = data.ndim
    if ndim not in (2, 3):
        raise ValueError(
            f"napari-sam2 writes 2-D or 3-D label layers; this one has {ndim} dimensions: "
            "slice it first, or save it with napari's own writer"
        )
    volume = data if ndim == 3 else data[None]
    most = int(np.asarray(volume).max(initial=0)) if volume.size else 0
    with label_output(
        path,
        tuple(int(s) for s in volume.shape),
        label_dtype_for(max(most, 1)),
        overwrite=True,
        geometry=layer_geometry(meta, ndim),
        source=f"napari layer {meta.get('name', '')}".strip(),
    ) as out:
        for t in range(volume.shape[0]):
            out[t] = np.asarray(volume[t])
    return [str(Path(path))]


def layer_geometry(meta: dict, ndim: int) -> Geometry:
    """The (N, Y, X) geometry of a layer's attributes: pixel sizes from ``scale`` (None where 1
    and no unit), ``translate`` as the origin, ``units`` (not "pixel") and axis names."""
    scale = [float(s) for s in (meta.get("scale") or [1.0] * ndim)][-ndim:]
    origin = [float(t) for t in (meta.get("translate") or [0.0] * ndim)][-ndim:]
    units = [_unit(u) for u in (meta.get("units") or [None] * ndim)][-ndim:]
    labels = [str(a).lower() for a in (meta.get("axis_labels") or [])][-ndim:]
    lead = labels[0] if ndim == 3 and labels and labels[0] in ("t", "z") else "z"
    axes = (lead if ndim == 3 else "") + "yx"
    sizes = tuple(s if u is not None or s != 1.0 else None for s, u in zip(scale, units))
    geometry = Geometry(axes, sizes, tuple(units), tuple(origin) if any(origin) else None)
    return label_geometry(geometry, list(range(ndim)))


def _unit(unit) -> str | None:
    text = "" if unit is None else str(unit)
    return None if text in ("", "pixel", "px") else text
