"""Stacks on disk (TIFF / OME-TIFF, ``.npy``, zarr) opened lazily as the frames the tracker
follows objects through."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..engine.stack import AxisFrames, StackError, StackGeometry
from .errors import InputError
from .formats import BIOIO_SUFFIXES, open_bioio
from .ome import Geometry, label_geometry, multiscales, tiff_geometry, unknown, zarr_geometry

TIFF_SUFFIXES = (".tif", ".tiff")
STACK_SUFFIXES = (*TIFF_SUFFIXES, ".npy", ".zarr")


def stack_stem(path: str | os.PathLike) -> str:
    """A stack's name without its extension(s): ``cells.ome.tif`` -> ``cells``; of a URL, its
    last part (``https://host/data/cells.ome.zarr/?x=1`` -> ``cells``)."""
    if is_url(path):
        name = path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    else:
        name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr", *STACK_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


@dataclass
class Stack:
    """A stack on disk, seen as the frames the tracker follows objects through.

    ``frames``: (T, H, W) or (T, H, W, C), read one frame at a time. ``shape``/``axes``: the
    file's own array (axes as tifffile names them, e.g. ``"TZYX"``, where known). For data with
    two non-spatial axes, ``axis`` is the tracked one and ``index`` the position on the other.
    """

    path: Path | str  # a str for a remote stack (its URL)
    frames: AxisFrames
    shape: tuple[int, ...]
    axes: str | None
    axis: int
    index: int | None
    _closers: list = field(default_factory=list, repr=False)
    geometry: Geometry | None = None  # axes and pixel sizes of ``shape``, where the file says

    @property
    def label_geometry(self) -> Geometry:
        """Axes and pixel sizes of the (T, H, W) label volume (the tracked axis, Y, X)."""
        geometry = self.geometry or unknown(len(self.shape))
        n = self.spatial_ndim
        keep = [n - 2, n - 1] if n == 2 else [self.axis, n - 2, n - 1]
        return label_geometry(geometry, keep)

    @property
    def fixed_axes(self) -> dict[str, int]:
        """The stack's axis that is neither tracked nor Y, X (data with two before them, e.g.
        (T, Z, Y, X)) by name, and the position the frames are taken at; else {}."""
        if self.index is None or self.geometry is None:
            return {}
        return {self.geometry.axes[1 - self.axis]: self.index}

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.frames.shape[1], self.frames.shape[2]

    @property
    def label_shape(self) -> tuple[int, int, int]:
        """(T, H, W) of the label volume written for this stack."""
        return self.frames.shape[:3]

    @property
    def spatial_ndim(self) -> int:
        """Dimensions of the file that are not channels (what napari's point coordinates have)."""
        return len(self.shape) - self.frames.geometry.rgb

    def close(self) -> None:
        for close in self._closers:
            close()
        self._closers.clear()


def open_stack(
    path: str | os.PathLike, *, axis: int | None = None, index: int | None = None
) -> Stack:
    """Open a stack lazily: TIFF / OME-TIFF (memory-mapped when the file allows it, else read
    page by page through tifffile's zarr view), ``.npy`` (memory-mapped) or a zarr array (a
    zarr group: its OME-Zarr full-resolution level, or its only array).

    The last two axes are rows and columns; a last axis of at most 4 (RGB(A) or a few
    channels) is taken as channels. Of the axes before them, one is tracked: with one, it is
    that one; with two, e.g. (T, Z, Y, X), ``axis`` says which is tracked (0 or 1) and ``index``
    where on the other the frames are taken. A single 2-D image is a stack of one frame.
    """
    if is_url(path):
        path = str(path)
        array, axes, closers, named = _open_remote(path)
    else:
        path = Path(path)
        if not path.exists():
            raise InputError(f"stack not found: {path}")
        array, axes, closers, named = _open_array(path)
    shape = tuple(int(s) for s in array.shape)
    channels = _channel_count(shape, axes)
    lead = len(shape) - 2 - (channels is not None)
    where = f"{path} has shape {shape}" + (f" (axes {axes})" if axes else "")
    if lead > 2 or len(shape) < 2:
        raise InputError(
            f"{where}: expected 2 to 4 dimensions, e.g. (T, Y, X) or (T, Z, Y, X) (plus an RGB "
            "or channel axis last); select the data to segment first"
        )
    if lead == 2:
        if axis not in (0, 1) or index is None:
            raise InputError(
                f"{where}: two axes come before (Y, X); say which one to track with --axis "
                "(0 or 1) and where to take the frames on the other with --index"
            )
        other = 1 - axis
        if not 0 <= index < shape[other]:
            raise InputError(
                f"{where}: --index {index} is out of range for axis {other} (0..{shape[other] - 1})"
            )
    else:
        if axis not in (None, 0):
            raise InputError(f"{where}: the only axis that can be tracked is 0, not --axis {axis}")
        if index is not None:
            raise InputError(
                f"{where}: --index is for data with two axes before (Y, X), e.g. (T, Z, Y, X)"
            )
        axis = 0
    if 0 in shape:
        raise InputError(f"{where}: the stack is empty")
    try:
        geometry = StackGeometry(
            shape,
            rgb=channels is not None,
            stack_axis=axis if lead else None,
            fixed={1 - axis: index} if lead == 2 else {},
        )
    except StackError as e:
        raise InputError(f"{where}: {e}") from e
    frames = geometry.frames(array)
    if 0 in frames.shape:
        raise InputError(f"{where}: the stack is empty")
    return Stack(path, frames, shape, axes, axis, index if lead == 2 else None, closers, named)


def _open_array(path: Path):
    """(array, axes (upper case, tifffile's names) or None, [close functions], geometry)."""
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return _open_tiff(path)
    if suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            return array, None, [], unknown(array.ndim)
        except (ValueError, OSError) as e:
            raise InputError(f"cannot read {path} as a .npy array: {e}") from e
    if path.is_dir():
        return _open_zarr(path)
    return _open_other(path, known=suffix in BIOIO_SUFFIXES)


def _open_other(path: Path, *, known: bool):
    """A file of another format, through bioio (the ``[formats]`` extra), its singleton axes
    dropped and a channel axis moved last as an OME-Zarr image's are."""
    array, axes, closers, geometry = open_bioio(path, known=known)
    view = AxesView(array, axes)
    return view, view.axes.upper(), closers, geometry.subset(view.order)


def _open_tiff(path: Path):
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            axes = tif.series[0].axes
            geometry = tiff_geometry(tif)
        try:  # uncompressed, contiguous: the operating system pages it in as frames are read
            return tifffile.memmap(path, mode="r"), axes, [], geometry
        except ValueError:
            pass
        import zarr

        store = tifffile.imread(path, aszarr=True)  # chunked: one page at a time
        array = zarr.open(store, mode="r")
        if not hasattr(array, "shape"):  # a pyramid: the full-resolution level
            array = array["0"]
        return array, axes, [store.close], geometry
    except (tifffile.TiffFileError, OSError, ValueError, KeyError) as e:
        raise InputError(f"cannot read {path} as a TIFF stack: {e}") from e


def _open_zarr(path: Path | str, store=None):
    """A zarr array; a group's only array; or an OME-Zarr image's finest level, with its axes
    and pixel sizes, singleton axes (other than Y, X) dropped and a channel axis moved last.
    A bioformats2raw layout (its root group says ``bioformats2raw.layout``) is its first
    image, ``0/``. ``store``: where to read ``path`` from (a remote store), else the path."""
    import zarr

    try:
        node = zarr.open(str(path) if store is None else store, mode="r")
    except Exception as e:  # zarr raises several types for "not a zarr store"
        raise InputError(f"cannot open {path} as a zarr array or group: {e}") from e
    if hasattr(node, "shape"):
        return node, None, [], unknown(node.ndim)
    if not multiscales(dict(node.attrs)) and _bioformats2raw(dict(node.attrs)):
        try:
            node = node["0"]
        except (KeyError, FileNotFoundError) as e:
            raise InputError(
                f"{path} is a bioformats2raw layout without its image 0/ ({e!r}); give the path "
                "of an image in it"
            ) from None
        path = f"{path}/0"
    if multiscales(dict(node.attrs)):
        try:
            level, geometry = zarr_geometry(node)
            array = node[level]
        except InputError as e:
            raise InputError(f"{path}: {e}") from None
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            raise InputError(f"{path}: unreadable OME-Zarr metadata ({e!r})") from e
        if len(geometry.axes) != array.ndim:
            geometry = unknown(array.ndim)
        view = AxesView(array, geometry.axes)
        return view, view.axes.upper(), [], geometry.subset(view.order)
    if store is not None:  # a remote folder cannot be listed
        raise InputError(
            f"{path} is a zarr group without OME-Zarr multiscales metadata: give the URL of the "
            "array (or OME-Zarr image) to segment"
        )
    arrays = [name for name, _ in node.arrays()]
    if len(arrays) == 1:
        array = node[arrays[0]]
        return array, None, [], unknown(array.ndim)
    raise InputError(
        f"{path} is a zarr group with arrays {arrays or 'none'}: give the path of the array to "
        f"segment, e.g. {path / (arrays[0] if arrays else 'ARRAY')}"
    )


def _bioformats2raw(attrs: dict) -> bool:
    """Whether a group's attributes mark a bioformats2raw layout (NGFF 0.4: top level; 0.5:
    under "ome")."""
    return "bioformats2raw.layout" in attrs or "bioformats2raw.layout" in attrs.get("ome", {})


# ------------------------------------------------------------------------------ remote OME-Zarr
REMOTE_SCHEMES = {"http": "aiohttp", "https": "aiohttp", "s3": "s3fs", "gs": "gcsfs"}


def is_url(path) -> bool:
    """Whether ``path`` names a remote stack (``https://``, ``s3://``, ...), not a local file."""
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def stack_location(path: str | os.PathLike) -> Path | str:
    """Where a stack is, as :func:`open_stack` takes it: a URL stays the string it is (a
    ``Path`` would fold its ``//`` into a local relative path), anything else is a ``Path``."""
    return path if is_url(path) else Path(path)


def _open_remote(url: str):
    """An OME-Zarr image (or zarr array) at ``url``, read-only through fsspec."""
    scheme = url.split("://", 1)[0].lower()
    package = REMOTE_SCHEMES.get(scheme)
    if package is None:
        raise InputError(
            f"{url}: cannot read {scheme}:// stacks; give a local path or an http(s)://, s3:// "
            "or gs:// URL of an OME-Zarr image"
        )
    for needed in ("fsspec", package):
        try:
            importlib.import_module(needed)
        except ImportError:
            raise InputError(
                f"{url}: reading {scheme}:// stacks needs the package {needed}, which is not "
                f"installed: pip install {needed}"
            ) from None
    from zarr.storage import FsspecStore

    try:
        store = FsspecStore.from_url(url.rstrip("/"), read_only=True)
    except Exception as e:  # fsspec's and the backends' errors have no common type
        raise InputError(f"cannot open {url}: {e}") from e
    return _open_zarr(url.rstrip("/"), store)


def _channel_count(shape: tuple[int, ...], axes: str | None) -> int | None:
    """The size of a trailing channel axis, or None."""
    if axes:
        return shape[-1] if axes[-1] in "SC" and len(shape) >= 3 else None
    if len(shape) >= 3 and shape[-1] <= 4 and min(shape[-3:-1]) > 4:
        return shape[-1]
    return None


class AxesView:
    """A lazy view of an array with axes named ``axes``: axes of size 1 other than Y and X
    dropped, and a channel axis ``c`` moved last (OME-Zarr keeps it before Z, Y, X). Read by
    integer keys on the leading axes, as :class:`~napari_sam2.engine.stack.AxisFrames` does."""

    def __init__(self, array, axes: str) -> None:
        self.array = array
        keep = [i for i, (a, n) in enumerate(zip(axes, array.shape)) if n > 1 or a in ("y", "x")]
        if "c" in axes and axes.index("c") in keep[:-1]:
            c = axes.index("c")
            keep = [i for i in keep if i != c] + [c]
        self.order = keep
        self.axes = "".join(axes[i] for i in keep)
        self.shape = tuple(int(array.shape[i]) for i in keep)
        self.dtype = array.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        if key is Ellipsis:
            key = ()
        key = key if isinstance(key, tuple) else (key,)
        full: list = [0] * self.array.ndim
        for i in self.order:
            full[i] = slice(None)
        for i, k in zip(self.order, key):
            full[i] = k
        out = np.asarray(self.array[tuple(full)])
        remaining = [i for i in range(self.array.ndim) if isinstance(full[i], slice)]
        wanted = [i for i in self.order[len(key) :] if isinstance(full[i], slice)]
        return np.transpose(out, [remaining.index(i) for i in wanted])
