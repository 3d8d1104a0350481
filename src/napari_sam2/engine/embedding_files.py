"""An embeddings store's files: its zarr layout (format mark, dtypes, per-frame arrays and
records), how one is made (built aside and renamed into place), opened and checked for
structural damage. :mod:`.embeddings` holds the store that uses them."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np

FORMAT = "napari-sam2 embeddings 2"
STORE_DTYPES = ("float16", "float32")
FRAME_ARRAYS = ("features", "high_res_0", "high_res_1")  # one chunk per frame
WINDOWS = "windows"  # a folder of window stores, one per window (EmbeddingStore.window)
CHANNELS_LAST = "channels_last"  # attribute: the arrays the model gives in channels-last layout
RECORDS = "frames"  # (T, 2) uint64 per frame: pixel hash (0: not stored), embedding checksum


class EmbeddingsError(ValueError):
    """An embeddings store that cannot be used: made for other data, model or input size,
    damaged, of an older format, or not an embeddings store at all."""


class EmbeddingsWarning(UserWarning):
    """A frame of an embeddings store that was not used (pixels changed, damaged), or a store
    that cannot be written: the frames concerned are computed again."""


def window_name(window: tuple[int, int, int, int]) -> str:
    """The folder name of a window's store: ``r0-c0-r1-c1``."""
    return "-".join(str(int(v)) for v in window)


def window_key(name: str) -> tuple[int, int, int, int] | None:
    """The window a folder name of :func:`window_name` stands for (None: not one)."""
    parts = name.split("-")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        return None
    r0, c0, r1, c1 = (int(p) for p in parts)
    return (r0, c0, r1, c1)


def open_group(path: Path, mode: str):
    import zarr

    if not path.is_dir():
        raise EmbeddingsError(f"{path} is not an embeddings store (a folder); give another path")
    try:
        return zarr.open_group(str(path), mode=mode)
    except Exception as e:  # zarr raises several types for "not a zarr group"
        raise EmbeddingsError(f"{path} is not an embeddings store: {e}") from e


def is_writable(path: Path) -> bool:
    """Whether the store's folders may be written (false on a read-only mount, or without
    permission): those where chunks and records go, and where window stores are made."""
    folders = [path] + [path / n for n in (*FRAME_ARRAYS, "pos", RECORDS)]
    folders += [f / "c" for f in folders[1:]] + [path / WINDOWS]
    return all(os.access(f, os.W_OK | os.X_OK) for f in folders if f.is_dir())


def create(path: Path, signature: dict, num_frames: int, dtype: str, layout) -> None:
    """Make a new store at ``path``: built beside it under a temporary name and renamed into
    place, so that a reader (or a second maker) sees a whole store or none. If another process
    made it first, its store stays and this one is discarded."""
    import zarr

    building = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial"
    try:
        group = zarr.open_group(str(building), mode="w-")
        group.attrs.update({"format": FORMAT, "signature": signature, "dtype": dtype})
        group.create_array(
            RECORDS, shape=(num_frames, 2), chunks=(1, 2), dtype="uint64", fill_value=0,
            compressors=None,
        )  # fmt: skip
        if layout is not None:
            create_arrays(group, num_frames, dtype, layout)
        try:
            os.rename(building, path)
        except OSError:
            if not (path.is_dir() and any(path.iterdir())):
                raise  # not "another process was first"
    finally:
        shutil.rmtree(building, ignore_errors=True)


def create_arrays(group, num_frames: int, dtype: str, layout: dict) -> None:
    import zarr

    for name in (*FRAME_ARRAYS, "pos"):
        shape = tuple(layout[name]) if name == "pos" else (num_frames, *layout[name])
        chunks = shape if name == "pos" else (1, *layout[name])
        try:
            group.create_array(
                name, shape=shape, chunks=chunks, dtype="float32" if name == "pos" else dtype,
                fill_value=0, compressors=None,
            )  # fmt: skip
        except zarr.errors.ContainsArrayError:
            pass  # made meanwhile by another process sharing the store: checked on use


def layout_of(parts, pos) -> dict:
    return {**{n: p.shape for n, p in zip(FRAME_ARRAYS, parts)}, "pos": pos.shape}


def stored_frames(array) -> list[int] | None:
    """The frames whose record chunk is in the store (one listing of the array's folder), or
    None where the store cannot be listed."""
    from zarr.core.sync import sync

    store, prefix = array.store_path.store, array.store_path.path

    async def keys() -> list[str]:
        return [key async for key in store.list_prefix(prefix)]

    try:
        found = sync(keys())
        # The key of frame t's chunk is before + str(t) + after, whatever the key encoding.
        marker = "987654321"
        before, after = array.metadata.encode_chunk_key((int(marker), 0)).split(marker)
    except Exception:  # a store that cannot list its keys
        return None
    frames = set()
    for key in found:
        relative = key[len(prefix) :].lstrip("/")
        if relative.startswith(before) and relative.endswith(after):
            number = relative[len(before) : len(relative) - len(after)]
            if number.isdigit():
                frames.add(int(number))
    return sorted(t for t in frames if t < array.shape[0])


def read_records(array) -> np.ndarray:
    """The per-frame records; one that cannot be read counts as not stored. Only the chunks in
    the store are read: a stack of 10**6 frames with a few embedded opens in milliseconds."""
    stored = stored_frames(array)
    if stored is None or len(stored) > array.shape[0] // 2:
        try:
            return np.array(array[:], dtype=np.uint64)
        except Exception:  # a truncated chunk: read the frames one by one
            stored = range(array.shape[0]) if stored is None else stored
    records = np.zeros(array.shape, dtype=np.uint64)
    for t in stored:
        try:
            records[t] = array[t]
        except Exception:
            pass
    return records


def damaged(path: Path, problem: str) -> EmbeddingsError:
    return EmbeddingsError(
        f"the embeddings store {path} is damaged: {problem}. Delete it (its frames are computed "
        "again) or give another path"
    )


def check_structure(path: Path, group, num_frames: int, layout: dict | None = None) -> None:
    """Refuse a store whose arrays are missing, of the wrong shape or dtype, or made for
    another number of frames."""
    dtype = group.attrs.get("dtype")
    if dtype not in STORE_DTYPES:
        raise damaged(path, f"its dtype {dtype!r} is none of {STORE_DTYPES}")

    def array(name):
        try:
            return group[name] if name in group else None
        except Exception as e:  # unreadable metadata
            raise damaged(path, f"its {name!r} array cannot be read ({e})") from e

    records = array(RECORDS)
    if records is None:
        raise damaged(path, f"its per-frame records (the {RECORDS!r} array) are missing")
    if tuple(records.shape) != (num_frames, 2) or records.dtype != np.uint64:
        raise damaged(
            path, f"its per-frame records have shape {tuple(records.shape)}, dtype "
            f"{records.dtype}; a store of this stack has ({num_frames}, 2), uint64"
        )  # fmt: skip
    names = (*FRAME_ARRAYS, "pos")
    arrays = {name: array(name) for name in names}
    present = [n for n in names if arrays[n] is not None]
    if not present:
        if np.count_nonzero(read_records(records)[:, 0]):
            raise damaged(path, "it records frames but holds no embedding arrays")
        return
    missing = [n for n in names if arrays[n] is None]
    if missing:
        raise damaged(path, f"its array(s) {missing} are missing")
    for name in names:
        a = arrays[name]
        shape, want_dtype = tuple(a.shape), ("float32" if name == "pos" else dtype)
        frame_shape = shape if name == "pos" else shape[1:]
        problems = []
        if name != "pos" and (shape[:1] != (num_frames,) or tuple(a.chunks)[0] != 1):
            problems.append(f"shape {shape} and chunks {tuple(a.chunks)}, not {num_frames} "
                            "frames of one chunk each")  # fmt: skip
        if layout is not None and frame_shape != tuple(layout[name]):
            problems.append(f"frames of shape {frame_shape}, this model's are {layout[name]}")
        if a.dtype != np.dtype(want_dtype):
            problems.append(f"dtype {a.dtype}, not {want_dtype}")
        if problems:
            raise damaged(path, f"its {name!r} array has " + " and ".join(problems))


def check_format(path: Path, attrs: dict) -> None:
    found = attrs.get("format")
    if found == FORMAT:
        return
    if isinstance(found, str) and found.startswith("napari-sam2 embeddings "):
        raise EmbeddingsError(
            f"{path} is an embeddings store of an older format ({found!r}, without the per-frame "
            f"checks of {FORMAT!r}); delete it and embed again, or give another path"
        )
    raise EmbeddingsError(
        f"{path} is not a napari-sam2 embeddings store (no {FORMAT!r} format mark); give "
        "another path, or delete it"
    )


def store_bytes(num_frames: int, layout: dict, dtype: str) -> int:
    """What ``num_frames`` frames of a store of ``layout`` take on disk in ``dtype``."""
    per_frame = sum(int(np.prod(shape)) for name, shape in layout.items() if name != "pos")
    return num_frames * per_frame * np.dtype(dtype).itemsize
