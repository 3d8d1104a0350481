"""The SAM2 labels array: as small as the data allow.

A Labels layer must have the image's shape (napari overlays them axis by axis), but only the
tracked slices are ever written. So:

- small volumes are a numpy array (uint16, or uint32 where object ids need it);
- larger ones are a zarr array in memory with one chunk per slice, allocated only when a slice
  is written — a (10, 40, 1024, 1024) stack tracked along one axis holds 40 slices, not 400;
- when even the tracked slices would not fit the RAM budget, the zarr array lives on disk, in a
  temporary folder (removed with the session) or at a path the user picks.

napari paints into zarr arrays as into numpy ones (and undoes), so the user sees no difference.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np

from ..engine.labels import label_dtype_for
from ..engine.stack import StackGeometry

DENSE_LIMIT = 256 * 2**20  # bytes: a whole label volume up to this is a numpy array
RAM_LIMIT = 2 * 2**30  # bytes: tracked slices beyond this go to disk


class LabelsData:
    """The array of a SAM2 labels layer, and where it lives (``kind``: numpy, memory, disk)."""

    def __init__(self, array, kind: str, folder: Path | None = None, temporary=False) -> None:
        self.array = array
        self.kind = kind
        self.folder = folder
        self._finalizer = (
            weakref.finalize(self, shutil.rmtree, folder, True) if temporary and folder else None
        )

    def describe(self) -> str:
        nbytes = np.prod(self.array.shape) * np.dtype(self.array.dtype).itemsize
        size = f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"
        where = {
            "numpy": "in memory",
            "memory": "in memory, slices allocated as they are written",
            "disk": f"on disk in {self.folder}",
        }[self.kind]
        return f"labels {self.array.dtype} {tuple(self.array.shape)} ({size} if dense), {where}"

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()


def allocate(
    geometry: StackGeometry,
    max_id: int = 1,
    path: str | Path | None = None,
    dense_limit: int = DENSE_LIMIT,
    ram_limit: int = RAM_LIMIT,
) -> LabelsData:
    """A zeroed labels array of ``geometry.labels_shape`` for ids up to ``max_id``; at ``path``
    (a zarr store on disk, kept) when given. Raises MemoryError or OSError when it cannot be
    made."""
    shape = tuple(geometry.labels_shape)
    dtype = label_dtype_for(max(1, max_id))
    itemsize = np.dtype(dtype).itemsize
    dense = int(np.prod(shape)) * itemsize
    plane = int(np.prod(geometry.spatial_shape)) * itemsize
    chunks = (1,) * (len(shape) - 2) + tuple(shape[-2:])
    if path is None and dense <= dense_limit:
        return LabelsData(np.zeros(shape, dtype=dtype), "numpy")
    import zarr

    if path is None and plane * geometry.num_frames <= ram_limit:
        from zarr.storage import MemoryStore

        array = zarr.create_array(
            store=MemoryStore(), shape=shape, chunks=chunks, dtype=dtype, fill_value=0
        )
        return LabelsData(array, "memory")
    temporary = path is None
    folder = Path(tempfile.mkdtemp(prefix="napari-sam2-labels-")) if temporary else Path(path)
    store = folder / "labels.zarr" if temporary else folder
    array = zarr.create_array(
        store=str(store), shape=shape, chunks=chunks, dtype=dtype, fill_value=0, overwrite=False
    )
    return LabelsData(array, "disk", folder, temporary=temporary)


def erase(data, geometry: StackGeometry, obj_ids) -> bool:
    """Remove these objects' labels from the tracked slices (one slice at a time, so that a
    zarr array is never read whole); returns whether anything changed."""
    ids = np.asarray(list(obj_ids))
    if isinstance(data, np.ndarray):
        hit = np.isin(data, ids)
        if hit.any():
            data[hit] = 0
            return True
        return False
    view = geometry.label_frames(data)
    changed = False
    for t in range(geometry.num_frames):
        frame = np.asarray(view[t])
        hit = np.isin(frame, ids)
        if hit.any():
            frame = frame.copy()
            frame[hit] = 0
            view[t] = frame
            changed = True
    return changed


def ids_per_frame(data, geometry: StackGeometry) -> dict[int, set[int]]:
    """Frame -> the label ids on it (for the object list of a resumed session)."""
    view = geometry.label_frames(data)
    out = {}
    for t in range(geometry.num_frames):
        ids = set(np.unique(np.asarray(view[t])).tolist()) - {0}
        if ids:
            out[t] = ids
    return out
