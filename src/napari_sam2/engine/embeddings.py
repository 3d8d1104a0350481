"""Frame embeddings computed once: in RAM for the most recent frames, and in a zarr store on
disk for every frame seen, so that re-propagation after a correction, the backward pass of
``both``, a return to a slice in the widget — and, with a store kept on disk, the next session or
another machine — never run the image encoder on a frame twice.

A store is a zarr group holding, per frame, the image encoder's output (the top-level
features and the two high-resolution levels the mask decoder reads), one chunk per frame, in
float16 (half the disk; results agree with float32 to a mask IoU of 0.999 or better, see
docs/troubleshooting.md#speed) or float32 (exact), and the position encoding they share. A
tracker's own temporary store is float32 unless the disk cannot hold it (:func:`temporary_dtype`);
a store kept at a path of the user's is float16 unless asked otherwise.

What a store returns is proven to be the embedding of that frame under those weights:

- **The whole store** carries a signature — the data (shape, dtype, a hash of sampled pixels,
  the channel and intensity window), the model (name, a hash of its weights, recomputed at every
  opening so that weights changed in place are noticed) and the input size. A store whose
  signature differs is refused (:class:`EmbeddingsError`), never reused: a cheap first check.
- **Each frame** has a record (the ``frames`` array, one chunk per frame, written after the
  frame's embedding): a hash of the frame's raw pixels as read from the stack, and a checksum
  of the embedding's stored bytes (and of the position encoding). On every read the frame's
  pixels are hashed again (milliseconds, against about a second of encoder on a CPU) and the
  bytes checked. A frame whose pixels changed, or whose chunks were deleted, truncated or
  altered, is not used: it is computed again and rewritten, with one warning
  (:class:`EmbeddingsWarning`) per store and kind. A frame without a record (never stored, or
  interrupted while being stored) is computed.
- **Structural damage** found on opening — no per-frame records, records for another number of
  frames, a missing array, an array of the wrong shape or dtype, a store of an older format —
  raises :class:`EmbeddingsError` naming the store, the problem and the fix (delete it, or give
  another path).

A store that cannot be written (a read-only mount, no permission) is opened read-only: the
frames it holds are read (and checked); frames it lacks, or holds for other pixels or damaged,
are computed into a temporary store (removed on close) instead, with one warning. A new store is
built under a temporary name beside its path and renamed into place, so two processes making
the same store at once both end up using the one that won, never half of each.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
import warnings
import weakref
import zlib
from pathlib import Path

import numpy as np
import torch

from ..model import SAM2Model
from ..model.config import SAM2Config
from ..model.sam2 import ImageEmbedding

FORMAT = "napari-sam2 embeddings 2"
STORE_DTYPES = ("float16", "float32")
FRAME_ARRAYS = ("features", "high_res_0", "high_res_1")  # one chunk per frame
RECORDS = "frames"  # (T, 2) uint64 per frame: pixel hash (0: not stored), embedding checksum
_HASH_FRAMES = 8  # frames whose pixels go into the data signature
_HASH_VALUES = 1 << 18  # values sampled per frame


class EmbeddingsError(ValueError):
    """An embeddings store that cannot be used: made for other data, model or input size,
    damaged, of an older format, or not an embeddings store at all."""


class EmbeddingsWarning(UserWarning):
    """A frame of an embeddings store that was not used (pixels changed, damaged), or a store
    that cannot be written: the frames concerned are computed again."""


def data_signature(source) -> dict:
    """What identifies a stack's embeddings: shape, dtype, the channel and intensity window
    that map it to the network's input, and a hash of pixels of up to 8 frames."""
    digest = hashlib.sha256()
    picks = np.unique(np.linspace(0, len(source) - 1, _HASH_FRAMES).astype(int))
    for t in picks:
        frame = np.ascontiguousarray(source.read(int(t))).ravel()
        step = max(1, frame.size // _HASH_VALUES)
        digest.update(np.ascontiguousarray(frame[::step]).tobytes())
    window = source.window
    return {
        "shape": list(source.shape),
        "dtype": str(source.dtype),
        "channel": int(source.channel),
        "window": None if window is None else [float(window.low), float(window.high)],
        "pixels_sha256": digest.hexdigest(),
    }


def model_signature(model: SAM2Model) -> dict:
    """The model's name, input size and a hash of its weights. The hash is computed at every
    call (73 ms for tiny's 156 MB on a CPU, about 0.4 s for large): weights changed in place
    (``load_state_dict``, ``param.data``) leave no trace a cache could key on."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    cfg = model.config
    return {
        "model": cfg.name,
        "image_size": int(cfg.image_size),
        "weights_sha256": digest.hexdigest(),
    }


def embedding_layout(config: SAM2Config) -> dict[str, tuple[int, ...]]:
    """The shape of one frame's arrays (without the frame axis), and of the position
    encoding, that a model of ``config`` stores."""
    c, e = config.hidden_dim, config.embedding_size
    return {
        "features": (c, e, e),
        "high_res_0": (c // 8, 4 * e, 4 * e),
        "high_res_1": (c // 4, 2 * e, 2 * e),
        "pos": (1, c, e, e),
    }


def frame_fingerprint(frame: np.ndarray) -> int:
    """A 64-bit hash (never 0) of a raw frame's shape, dtype and every pixel."""
    frame = np.ascontiguousarray(frame)
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{frame.shape} {frame.dtype.str}".encode())
    digest.update(frame.reshape(-1).view(np.uint8))
    return int.from_bytes(digest.digest(), "little") or 1


def _checksum(parts, pos: np.ndarray) -> int:
    value = 0
    for array in (*parts, pos):
        value = zlib.crc32(np.ascontiguousarray(array).reshape(-1).view(np.uint8), value)
    return value


class EmbeddingStore:
    """Frame embeddings in a zarr group on disk, one chunk per frame, each frame checked on
    read (see the module's docstring).

    Open with :meth:`open` (a path that may or may not exist yet) or :meth:`temporary` (removed
    on :meth:`close`). ``get(t, pixels=...)`` returns frame ``t``'s :class:`ImageEmbedding`
    (float32), or None if it is not stored, was made from other pixels or is damaged;
    ``put(t, emb, pixels)`` stores it. ``pixels`` is :func:`frame_fingerprint` of the frame.
    """

    def __init__(self, group, path: Path, writable: bool = True) -> None:
        self.group = group
        self.path = path
        self.writable = writable
        self._finalizer = None
        self._pos: np.ndarray | None = None  # the position encoding, as stored and checked
        self._pos_written = False  # by this object: the store's pos is the model's
        self._warned: set[str] = set()
        self._records = _read_records(group[RECORDS])

    @classmethod
    def open(
        cls,
        path,
        signature: dict,
        num_frames: int,
        dtype: str = "float16",
        layout: dict | None = None,
    ) -> EmbeddingStore:
        """The store at ``path``: created (with ``dtype``) if it does not exist, else checked
        against ``signature`` and, when given, the ``layout`` of :func:`embedding_layout`
        (:class:`EmbeddingsError` if it was made for something else or is damaged). A store
        that cannot be written is opened read-only (``writable`` False)."""
        if dtype not in STORE_DTYPES:
            raise EmbeddingsError(f"embeddings dtype must be one of {STORE_DTYPES}, got {dtype!r}")
        path = Path(path)
        if not path.exists():
            _create(path, signature, num_frames, dtype, layout)  # or another process did
        writable = _writable(path)
        group = _open_group(path, mode="r+" if writable else "r")
        stored = dict(group.attrs)
        _check_format(path, stored)
        cls.check_signature(path, stored.get("signature", {}), signature)
        check_structure(path, group, num_frames, layout)
        return cls(group, path, writable)

    @classmethod
    def temporary(
        cls,
        num_frames: int,
        dtype: str = "float16",
        parent=None,
        signature: dict | None = None,
        layout: dict | None = None,
    ) -> EmbeddingStore:
        """A store in a new temporary folder (under ``parent``), removed by :meth:`close` or
        when garbage-collected. Only its maker uses it, so ``signature`` is optional."""
        folder = Path(tempfile.mkdtemp(prefix="napari-sam2-embeddings-", dir=parent))
        store = cls.open(folder / "embeddings.zarr", signature or {}, num_frames, dtype, layout)
        store._finalizer = weakref.finalize(store, shutil.rmtree, folder, True)
        return store

    @staticmethod
    def read_signature(path) -> dict:
        """The signature an existing store was made with (:class:`EmbeddingsError` if the path
        holds no embeddings store, or one of another format)."""
        path = Path(path)
        stored = dict(_open_group(path, mode="r").attrs)
        _check_format(path, stored)
        return dict(stored.get("signature", {}))

    @staticmethod
    def check_signature(path, stored: dict, expected: dict) -> None:
        """Refuse a store made for other data, another model or another input size."""
        _check_signature(Path(path), stored, expected)

    @staticmethod
    def check(path, num_frames: int, layout: dict | None = None) -> None:
        """Refuse (:class:`EmbeddingsError`) an existing store that is damaged or made for
        another number of frames or ``layout``, without opening it for writing."""
        path = Path(path)
        group = _open_group(path, mode="r")
        _check_format(path, dict(group.attrs))
        check_structure(path, group, num_frames, layout)

    @staticmethod
    def can_write(path) -> bool:
        """Whether the store at ``path`` may be written (not a read-only mount, permitted)."""
        return _writable(Path(path))

    @property
    def dtype(self) -> str:
        return str(self.group.attrs["dtype"])

    @property
    def num_frames(self) -> int:
        return len(self._records)

    def __contains__(self, t: int) -> bool:
        """Whether frame ``t`` has a record (its pixels and bytes are checked by :meth:`get`)."""
        return bool(self._records[t, 0])

    @property
    def frames_done(self) -> int:
        return int(np.count_nonzero(self._records[:, 0]))

    def get(self, t: int, device=None, pixels: int | None = None) -> ImageEmbedding | None:
        """Frame ``t``'s embedding, or None: not stored, made from other pixels than
        ``pixels`` (when given), or damaged — the latter two with a warning (once each)."""
        if not self._records[t, 0]:
            return None
        if pixels is not None and int(self._records[t, 0]) != pixels:
            self._drop(t, "changed", f"frame {t} of the stack changed since its embedding was "
                       "stored (its pixels differ)")  # fmt: skip
            return None
        try:
            parts = [np.asarray(self.group[name][t]) for name in FRAME_ARRAYS]
            pos = self._stored_pos()
        except Exception as e:  # zarr raises several types for a truncated or unreadable chunk
            self._drop(t, "damaged", f"frame {t}'s embedding cannot be read ({type(e).__name__})")
            return None
        if _checksum(parts, pos) != int(self._records[t, 1]):
            self._drop(t, "damaged", f"frame {t}'s embedding is damaged (its bytes changed, or a "
                       "chunk was deleted)")  # fmt: skip
            return None

        def tensor(array):
            array = torch.from_numpy(np.ascontiguousarray(array)[None]).float()
            return array.to(device) if device is not None else array

        return ImageEmbedding(
            tensor(parts[0]), (tensor(parts[1]), tensor(parts[2])), tensor(pos[0])
        )

    def put(self, t: int, emb: ImageEmbedding, pixels: int) -> None:
        """Store frame ``t``'s embedding, computed from a frame of fingerprint ``pixels``: the
        arrays first, then the record that makes them count."""
        if not self.writable:
            raise EmbeddingsError(f"the embeddings store {self.path} is read-only")
        parts = [  # no copy where the store's dtype is the embedding's (float32)
            t.detach().float().cpu().numpy().astype(self.dtype, copy=False)[0]
            for t in (emb.features, *emb.high_res)
        ]
        pos = emb.pos.detach().float().cpu().numpy()
        if FRAME_ARRAYS[0] not in self.group:  # a store made without a layout
            _create_arrays(self.group, self.num_frames, self.dtype, _layout_of(parts, pos))
        self._check_shapes(parts, pos)
        if not self._pos_written:
            try:
                same = np.array_equal(self._stored_pos(), pos)
            except Exception:  # a damaged chunk: rewritten
                same = False
            if not same:
                self.group["pos"][:] = pos
            self._pos, self._pos_written = pos, True
        for name, part in zip(FRAME_ARRAYS, parts):
            self.group[name][t] = part
        record = np.array([pixels or 1, _checksum(parts, pos)], dtype=np.uint64)
        self.group[RECORDS][t] = record
        self._records[t] = record

    def _stored_pos(self) -> np.ndarray:
        if self._pos is None:
            self._pos = np.asarray(self.group["pos"][:], dtype=np.float32)
        return self._pos

    def _check_shapes(self, parts, pos) -> None:
        for name, part in (*zip(FRAME_ARRAYS, parts), ("pos", pos)):
            stored = tuple(self.group[name].shape)
            stored = stored if name == "pos" else stored[1:]
            if stored != part.shape:
                raise EmbeddingsError(
                    f"the embeddings store {self.path} holds {name} of shape {stored}, this model "
                    f"gives {part.shape}: it was made for another model or input size; give "
                    "another store, or delete it"
                )

    def _drop(self, t: int, kind: str, what: str) -> None:
        """Forget frame ``t``'s record here (it is computed again), warning once per kind."""
        self._records[t] = 0
        if kind in self._warned:
            return
        self._warned.add(kind)
        fate = "rewritten" if self.writable else "kept in a temporary store (this one is read-only)"
        warnings.warn(
            f"embeddings store {self.path}: {what}; it is computed again and {fate}. Other "
            "frames found so are treated alike without another warning",
            EmbeddingsWarning,
            stacklevel=4,
        )

    def close(self) -> None:
        """Remove a temporary store's files (a store at a path of the user's stays)."""
        if self._finalizer is not None:
            self._finalizer()


def _open_group(path: Path, mode: str):
    import zarr

    if not path.is_dir():
        raise EmbeddingsError(f"{path} is not an embeddings store (a folder); give another path")
    try:
        return zarr.open_group(str(path), mode=mode)
    except Exception as e:  # zarr raises several types for "not a zarr group"
        raise EmbeddingsError(f"{path} is not an embeddings store: {e}") from e


def _writable(path: Path) -> bool:
    """Whether the store's folders may be written (false on a read-only mount, or without
    permission): those where chunks and records go."""
    folders = [path] + [path / n for n in (*FRAME_ARRAYS, "pos", RECORDS)]
    folders += [f / "c" for f in folders[1:]]
    return all(os.access(f, os.W_OK | os.X_OK) for f in folders if f.is_dir())


def _create(path: Path, signature: dict, num_frames: int, dtype: str, layout) -> None:
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
            _create_arrays(group, num_frames, dtype, layout)
        try:
            os.rename(building, path)
        except OSError:
            if not (path.is_dir() and any(path.iterdir())):
                raise  # not "another process was first"
    finally:
        shutil.rmtree(building, ignore_errors=True)


def _create_arrays(group, num_frames: int, dtype: str, layout: dict) -> None:
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


def _layout_of(parts, pos) -> dict:
    return {**{n: p.shape for n, p in zip(FRAME_ARRAYS, parts)}, "pos": pos.shape}


def _stored_frames(array) -> list[int] | None:
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


def _read_records(array) -> np.ndarray:
    """The per-frame records; one that cannot be read counts as not stored. Only the chunks in
    the store are read: a stack of 10**6 frames with a few embedded opens in milliseconds."""
    stored = _stored_frames(array)
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


def _damaged(path: Path, problem: str) -> EmbeddingsError:
    return EmbeddingsError(
        f"the embeddings store {path} is damaged: {problem}. Delete it (its frames are computed "
        "again) or give another path"
    )


def check_structure(path: Path, group, num_frames: int, layout: dict | None = None) -> None:
    """Refuse a store whose arrays are missing, of the wrong shape or dtype, or made for
    another number of frames."""
    dtype = group.attrs.get("dtype")
    if dtype not in STORE_DTYPES:
        raise _damaged(path, f"its dtype {dtype!r} is none of {STORE_DTYPES}")

    def array(name):
        try:
            return group[name] if name in group else None
        except Exception as e:  # unreadable metadata
            raise _damaged(path, f"its {name!r} array cannot be read ({e})") from e

    records = array(RECORDS)
    if records is None:
        raise _damaged(path, f"its per-frame records (the {RECORDS!r} array) are missing")
    if tuple(records.shape) != (num_frames, 2) or records.dtype != np.uint64:
        raise _damaged(
            path, f"its per-frame records have shape {tuple(records.shape)}, dtype "
            f"{records.dtype}; a store of this stack has ({num_frames}, 2), uint64"
        )  # fmt: skip
    names = (*FRAME_ARRAYS, "pos")
    arrays = {name: array(name) for name in names}
    present = [n for n in names if arrays[n] is not None]
    if not present:
        if np.count_nonzero(_read_records(records)[:, 0]):
            raise _damaged(path, "it records frames but holds no embedding arrays")
        return
    missing = [n for n in names if arrays[n] is None]
    if missing:
        raise _damaged(path, f"its array(s) {missing} are missing")
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
            raise _damaged(path, f"its {name!r} array has " + " and ".join(problems))


def _check_format(path: Path, attrs: dict) -> None:
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


def _check_signature(path: Path, stored: dict, expected: dict) -> None:
    """Refuse a store made for other data, another model or another input size."""
    differ = [k for k in sorted(set(stored) | set(expected)) if stored.get(k) != expected.get(k)]
    if not differ:
        return
    labels = {
        "shape": "data shape",
        "dtype": "data dtype",
        "channel": "channel",
        "window": "intensity window",
        "pixels_sha256": "pixel content",
        "model": "model",
        "image_size": "input size",
        "weights_sha256": "weights",
    }
    details = ", ".join(
        f"{labels.get(k, k)} ({stored.get(k)!r} in the store, {expected.get(k)!r} here)"
        if k != "pixels_sha256" and k != "weights_sha256"
        else f"{labels[k]}"
        for k in differ
    )
    raise EmbeddingsError(
        f"the embeddings in {path} were made for something else — differs: {details}. "
        "Give the store made for this stack and model, another path (a new store is made), or "
        "delete it"
    )


def store_bytes(num_frames: int, layout: dict, dtype: str) -> int:
    """What ``num_frames`` frames of a store of ``layout`` take on disk in ``dtype``."""
    per_frame = sum(int(np.prod(shape)) for name, shape in layout.items() if name != "pos")
    return num_frames * per_frame * np.dtype(dtype).itemsize


def temporary_dtype(num_frames: int, layout: dict, parent=None) -> str:
    """The dtype of a tracker's own temporary store: float32 (exact: the same results as
    computing every frame again) where the disk holds it, else float16 (half the size), said
    once with the sizes."""
    folder = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    need = store_bytes(num_frames, layout, "float32")
    free = shutil.disk_usage(folder).free
    if need <= 0.9 * free:
        return "float32"
    warnings.warn(
        f"the embeddings of {num_frames} frames need {need / 2**30:.1f} GiB in float32 and "
        f"{folder} has {free / 2**30:.1f} GiB free: keeping them in float16 (half the size; "
        "masks within an IoU of 0.999 of exact). Give a spill folder on a larger disk for "
        "exact results",
        EmbeddingsWarning,
        stacklevel=3,
    )
    return "float16"


def store_for(
    embeddings, dtype: str | None, parent, source, model: SAM2Model
) -> EmbeddingStore | None:
    """The store a tracker uses: None for ``embeddings=False`` (RAM only); a temporary one for
    None (under ``parent``; ``dtype`` None: :func:`temporary_dtype`); the one given; or the one
    at the path given, checked against ``source`` and ``model`` (a new one in ``dtype``, None:
    float16, the default of stores kept on disk)."""
    if embeddings is False:
        return None
    if isinstance(embeddings, EmbeddingStore):
        return embeddings
    layout = embedding_layout(model.config)
    if embeddings is None:
        dtype = dtype or temporary_dtype(len(source), layout, parent)
        return EmbeddingStore.temporary(len(source), dtype, parent=parent, layout=layout)
    signature = {**data_signature(source), **model_signature(model)}
    return EmbeddingStore.open(embeddings, signature, len(source), dtype or "float16", layout)
