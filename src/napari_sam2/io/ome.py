"""Geometry of stacks and label volumes: axes and pixel sizes read from OME-Zarr (NGFF 0.4 and
0.5), OME-TIFF and ImageJ TIFF, and written to OME-Zarr labels and OME-TIFF, so that napari and
other viewers put the labels exactly over the image."""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass

from .errors import InputError

LABEL_NAME = "sam2"


@dataclass(frozen=True)
class Geometry:
    """Axes (lower-case names, e.g. "zyx") and, per axis, the pixel size and its unit (None
    where unknown)."""

    axes: str
    sizes: tuple[float | None, ...]
    units: tuple[str | None, ...]
    origin: tuple[float, ...] | None = None  # where pixel 0 lies (an OME-Zarr translation)

    def subset(self, keep: list[int]) -> Geometry:
        return Geometry(
            "".join(self.axes[i] for i in keep),
            tuple(self.sizes[i] for i in keep),
            tuple(self.units[i] for i in keep),
            None if self.origin is None else tuple(self.origin[i] for i in keep),
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
    that level, units).

    Metadata that no output could carry are refused with :class:`InputError`: an axis named
    twice, a scale list whose length is not the number of axes, a scale that is not a finite
    number > 0 (NaN would make the labels' metadata invalid JSON). A unit NGFF does not know
    (e.g. "pixel") is dropped with a warning: the labels keep the scale without a unit."""
    ms = multiscales(dict(group.attrs))[0]
    dataset = ms["datasets"][0]
    axes = ms.get("axes") or []
    labels = [str(a["name"] if isinstance(a, dict) else a) for a in axes]
    names = "".join(name[:1].lower() for name in labels)
    repeated = sorted({a for a in names if names.count(a) > 1})
    if repeated:
        raise InputError(
            f"the OME-Zarr axes {labels} name {', '.join(map(repr, repeated))} more than once; "
            "each axis must have its own name (e.g. t, c, z, y, x): fix the metadata "
            "(.zattrs or zarr.json)"
        )
    ndim = len(names) or group[dataset["path"]].ndim
    scale, origin = [1.0] * ndim, [0.0] * ndim
    # the dataset's transforms apply first, then the multiscale's: physical = s * index + t
    for where, transforms in (
        (f"dataset {dataset['path']!r}", dataset.get("coordinateTransformations") or []),
        ("multiscales", ms.get("coordinateTransformations") or []),
    ):
        for t in transforms:
            if isinstance(t, dict) and t.get("type") == "scale":
                s = _scale(t.get("scale"), ndim, where)
                scale = [a * b for a, b in zip(scale, s)]
                origin = [a * b for a, b in zip(origin, s)]
            elif isinstance(t, dict) and t.get("type") == "translation":
                origin = [a + b for a, b in zip(origin, _translation(t, ndim, where))]
    units = tuple(_unit(a) for a in axes) or (None,) * ndim
    geometry = Geometry(
        names or unknown(ndim).axes, tuple(scale), units, tuple(origin) if any(origin) else None
    )
    return dataset["path"], geometry


def _scale(values, ndim: int, where: str) -> list[float]:
    """A scale transformation's values, checked: one finite number > 0 per axis."""
    if not isinstance(values, (list, tuple)) or len(values) != ndim:
        n = len(values) if isinstance(values, (list, tuple)) else "no"
        raise InputError(
            f"the OME-Zarr scale of {where} has {n} values ({values!r}) for {ndim} axes; it "
            "needs one pixel size per axis: fix the metadata (.zattrs or zarr.json)"
        )
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float))]
    bad = bad or [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise InputError(
            f"the OME-Zarr scale of {where} is {values!r}: pixel sizes must be finite numbers "
            f"> 0, not {bad[0]!r}; fix the metadata (.zattrs or zarr.json), or give the path "
            "of the level's array to segment it without metadata"
        )
    return [float(v) for v in values]


def _translation(transform: dict, ndim: int, where: str) -> list[float]:
    """A translation's values, checked: one finite number per axis."""
    values = transform.get("translation")
    ok = isinstance(values, (list, tuple)) and len(values) == ndim
    if not ok or any(
        isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
        for v in values
    ):
        raise InputError(
            f"the OME-Zarr translation of {where} is {values!r}: it needs one finite number "
            f"per axis ({ndim}); fix the metadata (.zattrs or zarr.json)"
        )
    return [float(v) for v in values]


def _unit(axis) -> str | None:
    unit = axis.get("unit") if isinstance(axis, dict) else None
    if unit is None:
        return None
    if not isinstance(unit, str) or _ngff_unit(unit) not in NGFF_UNITS:
        name = axis.get("name")
        warnings.warn(
            f"the OME-Zarr axis {name!r} has the unit {unit!r}, which is not an NGFF unit; it is "
            "left out of the output (the scale is kept without a unit). Use an NGFF unit name "
            "such as 'micrometer' or 'second', or remove the unit",
            stacklevel=3,
        )
        return None
    return unit


def _axis(name: str, unit: str | None) -> dict:
    kind = "time" if name == "t" else "channel" if name == "c" else "space"
    axis = {"name": name, "type": kind}
    if unit:
        axis["unit"] = _ngff_unit(unit)
    return axis


_UNITS = {"µm": "micrometer", "um": "micrometer", "micron": "micrometer", "nm": "nanometer",
          "mm": "millimeter", "s": "second", "sec": "second", "ms": "millisecond"}  # fmt: skip


_PREFIXES = ("yocto", "zepto", "atto", "femto", "pico", "nano", "micro", "milli", "centi",
             "deci", "", "deca", "hecto", "kilo", "mega", "giga", "tera", "peta", "exa", "zetta",
             "yotta")  # fmt: skip
# The units NGFF 0.4/0.5 allow on an axis (UDUNITS-2 names).
NGFF_UNITS = frozenset(
    [p + "meter" for p in _PREFIXES]
    + [p + "second" for p in _PREFIXES]
    + ["angstrom", "foot", "inch", "mile", "parsec", "yard", "day", "hour", "minute"]
)


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
        origin = None if out.origin is None else (0.0, *out.origin)
        out = Geometry("t" + out.axes, (None, *out.sizes), (None, *out.units), origin)
    if len(set(out.axes)) != len(out.axes) or not out.axes.endswith("yx"):
        out = Geometry("tyx", out.sizes, out.units, out.origin)
    return out


__all__ = ["Geometry", "label_geometry", "tiff_geometry", "tiff_metadata", "zarr_geometry"]
