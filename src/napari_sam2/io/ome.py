"""Geometry of stacks and label volumes: axes and pixel sizes read from OME-Zarr (NGFF 0.4 and
0.5), OME-TIFF and ImageJ TIFF, and written to OME-Zarr labels and OME-TIFF, so that napari and
other viewers put the labels exactly over the image."""

from __future__ import annotations

import re
from dataclasses import dataclass

LABEL_NAME = "sam2"


@dataclass(frozen=True)
class Geometry:
    """Axes (lower-case names, e.g. "zyx") and, per axis, the pixel size and its unit (None
    where unknown)."""

    axes: str
    sizes: tuple[float | None, ...]
    units: tuple[str | None, ...]

    def subset(self, keep: list[int]) -> Geometry:
        return Geometry(
            "".join(self.axes[i] for i in keep),
            tuple(self.sizes[i] for i in keep),
            tuple(self.units[i] for i in keep),
        )

    @property
    def known(self) -> bool:
        return any(s is not None for s in self.sizes)


def unknown(ndim: int, axes: str | None = None) -> Geometry:
    names = (axes or "").lower()
    if len(names) != ndim:
        names = "tzyx"[-ndim:] if ndim <= 4 else "".join(f"{i}" for i in range(ndim))
    return Geometry(names, (None,) * ndim, (None,) * ndim)


# -------------------------------------------------------------------------------------- OME-Zarr
def multiscales(attrs: dict) -> list | None:
    """The ``multiscales`` list of an NGFF group's attributes (0.5 nests it under "ome")."""
    return attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")


def zarr_geometry(group) -> tuple[str, Geometry]:
    """The path of the finest level of an OME-Zarr image group and its geometry (axes, scale of
    that level, units)."""
    ms = multiscales(dict(group.attrs))[0]
    dataset = ms["datasets"][0]
    axes = ms.get("axes") or []
    names = "".join((a["name"] if isinstance(a, dict) else str(a))[:1].lower() for a in axes)
    ndim = len(names) or group[dataset["path"]].ndim
    scale = [1.0] * ndim
    for transforms in (
        ms.get("coordinateTransformations", []),
        dataset.get("coordinateTransformations", []),
    ):
        for t in transforms:
            if t.get("type") == "scale":
                scale = [a * float(b) for a, b in zip(scale, t["scale"])]
    units = tuple((a.get("unit") if isinstance(a, dict) else None) for a in axes) or (None,) * ndim
    geometry = Geometry(names or unknown(ndim).axes, tuple(scale), units)
    return dataset["path"], geometry


def write_zarr_labels(labels, geometry: Geometry, name: str = LABEL_NAME) -> None:
    """Make ``labels`` an NGFF ``labels`` group whose label image ``name`` (a subgroup holding
    the volume as array "0") has one level with the image's axes and scale, and ``image-label``
    metadata: napari-ome-zarr and other NGFF viewers open it as labels over the image (copy it
    as ``labels/`` into the image's .ome.zarr, or open it alone)."""
    from ome_zarr.writer import write_label_metadata, write_multiscales_metadata

    names = ("z" if geometry.axes[0] == "z" else "t") + "yx"  # what NGFF allows for (N, Y, X)
    axes = [_axis(a, unit) for a, unit in zip(names, geometry.units)]
    scale = [1.0 if s is None else float(s) for s in geometry.sizes]
    level = {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}
    write_multiscales_metadata(labels[name], datasets=[level], axes=axes, name=name)
    write_label_metadata(labels, name)


def _axis(name: str, unit: str | None) -> dict:
    kind = "time" if name == "t" else "channel" if name == "c" else "space"
    axis = {"name": name, "type": kind}
    if unit:
        axis["unit"] = _ngff_unit(unit)
    return axis


_UNITS = {"µm": "micrometer", "um": "micrometer", "micron": "micrometer", "nm": "nanometer",
          "mm": "millimeter", "s": "second", "sec": "second", "ms": "millisecond"}  # fmt: skip


def _ngff_unit(unit: str) -> str:
    return _UNITS.get(unit.strip().lower().replace("\\u00b5", "µ"), unit)


# ------------------------------------------------------------------------------------------ TIFF
def tiff_geometry(tif) -> Geometry:
    """Axes and pixel sizes of a tifffile ``TiffFile``: OME-XML ``PhysicalSize*`` and
    ``TimeIncrement``, or ImageJ's resolution tags and ``spacing``; None where unknown."""
    series = tif.series[0]
    axes = series.axes.lower().replace("q", "t").replace("i", "t")
    sizes: dict[str, float] = {}
    units: dict[str, str] = {}
    if tif.is_ome and tif.ome_metadata:
        pixels = re.search(r"<Pixels\b[^>]*>", tif.ome_metadata)
        text = pixels.group(0) if pixels else ""
        for axis, key in (("x", "PhysicalSizeX"), ("y", "PhysicalSizeY"), ("z", "PhysicalSizeZ"),
                          ("t", "TimeIncrement")):  # fmt: skip
            m = re.search(rf'\b{key}="([^"]+)"', text)
            if m:
                sizes[axis] = float(m.group(1))
                u = re.search(rf'\b{key}Unit="([^"]+)"', text)
                units[axis] = u.group(1) if u else ("µm" if axis != "t" else "s")
    elif tif.is_imagej:
        meta = tif.imagej_metadata or {}
        unit = meta.get("unit")
        page = tif.pages[0]
        for axis, tag in (("x", "XResolution"), ("y", "YResolution")):
            value = page.tags.get(tag)
            if value is not None:
                num, den = value.value
                if num:
                    sizes[axis] = den / num
                    units[axis] = unit
        if "spacing" in meta:
            sizes["z"], units["z"] = float(meta["spacing"]), unit
        if meta.get("finterval"):
            sizes["t"], units["t"] = float(meta["finterval"]), "s"
    return Geometry(
        axes,
        tuple(sizes.get(a) for a in axes),
        tuple(units.get(a) for a in axes),
    )


def tiff_metadata(geometry: Geometry) -> dict:
    """tifffile keywords that write ``geometry`` (of a (N, Y, X) label volume) as OME-TIFF."""
    if not geometry.known:
        return {}
    meta = {"axes": geometry.axes.upper()}
    for axis, size, unit in zip(geometry.axes, geometry.sizes, geometry.units):
        if size is None:
            continue
        key = {
            "x": "PhysicalSizeX",
            "y": "PhysicalSizeY",
            "z": "PhysicalSizeZ",
            "t": "TimeIncrement",
        }.get(axis)
        if key is None:
            continue
        meta[key] = float(size)
        if unit:
            meta[key + "Unit"] = "µm" if _ngff_unit(unit) == "micrometer" else unit
    return {"ome": True, "metadata": meta}


def label_geometry(stack_geometry: Geometry, keep: list[int]) -> Geometry:
    """The geometry of a stack's (N, Y, X) label volume: its tracked axis and Y, X (``keep``,
    their positions in the stack); a single image's (1, Y, X) volume gets an unknown first
    axis."""
    out = stack_geometry.subset(keep)
    if len(keep) == 2:
        out = Geometry("t" + out.axes, (None, *out.sizes), (None, *out.units))
    if len(set(out.axes)) != len(out.axes) or not out.axes.endswith("yx"):
        out = Geometry("tyx", out.sizes, out.units)
    return out


__all__ = ["Geometry", "label_geometry", "tiff_geometry", "tiff_metadata", "zarr_geometry"]
