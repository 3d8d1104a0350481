"""Microscope formats (CZI, ND2, LIF and whatever else bioio's plugins read) opened lazily
through bioio, the optional ``[formats]`` extra: its dask data, axes and pixel sizes."""

from __future__ import annotations

from pathlib import Path

from .errors import InputError
from .ome import Geometry

# Files only bioio reads here (TIFF, .npy and zarr have their own readers); any other file is
# offered to bioio too, when it is installed.
BIOIO_SUFFIXES = (".czi", ".nd2", ".lif")
EXTRA = 'pip install "napari-sam2[formats]"'


def open_bioio(path: Path, *, known: bool):
    """(array, axes, [close functions], geometry) of the first scene of ``path``, read through
    bioio: a dask array, read one chunk at a time. ``known``: the suffix is one only bioio
    reads (a missing bioio is then named as such; else the file type is unsupported)."""
    try:
        from bioio import BioImage
        from bioio_base.exceptions import UnsupportedFileFormatError
    except ImportError:
        if not known:
            raise InputError(
                f"{path}: unsupported file type; give a TIFF / OME-TIFF (.tif, .tiff), a .npy "
                f"file or a zarr directory, or for CZI, ND2, LIF and other microscope formats "
                f"install bioio: {EXTRA}"
            ) from None
        raise InputError(
            f"{path}: reading {path.suffix.lower()} files needs bioio and its plugin for the "
            f"format, which are not installed: {EXTRA}"
        ) from None
    try:
        image = BioImage(path)
    except UnsupportedFileFormatError:
        raise InputError(
            f"{path}: unsupported file type, or a damaged file: no installed bioio plugin "
            f"reads it. {EXTRA} installs the readers of CZI, ND2, LIF and OME-TIFF; else give "
            "a TIFF / OME-TIFF, a .npy file or a zarr directory"
        ) from None
    except Exception as e:  # the plugins raise their own types for a damaged file
        raise InputError(f"cannot read {path} through bioio: {e}") from e
    array = image.dask_data
    axes = _axes(image.dims.order, array.shape)
    return array, axes, [], _geometry(image, axes)


def _axes(order: str, shape) -> str:
    """bioio's dimension names (e.g. "TCZYX", "TCZYXS") as ours, lower case: RGB samples ``S``
    become the channel axis ``c`` (a singleton ``C`` beside them is left unnamed, ``q``, and
    dropped as every singleton is)."""
    axes = order.lower()
    if "s" in axes:
        c = axes.find("c")
        if c >= 0 and shape[c] == 1:
            axes = axes.replace("c", "q")
        if "c" not in axes:
            axes = axes.replace("s", "c")
    return axes


def _geometry(image, axes: str) -> Geometry:
    """Pixel sizes bioio reports (micrometres for Z, Y, X; seconds between time points)."""
    sizes: dict[str, float] = {}
    pixels = image.physical_pixel_sizes
    for axis, value in (("z", pixels.Z), ("y", pixels.Y), ("x", pixels.X)):
        if value:
            sizes[axis] = float(value)
    interval = getattr(image, "time_interval", None)
    seconds = getattr(interval, "total_seconds", None)
    if seconds is not None and seconds() > 0:
        sizes["t"] = float(seconds())
    units = {a: "second" if a == "t" else "micrometer" for a in sizes}
    return Geometry(axes, tuple(sizes.get(a) for a in axes), tuple(units.get(a) for a in axes))
