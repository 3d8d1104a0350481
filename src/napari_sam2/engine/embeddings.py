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

**Windows** of big frames (tiles: docs/big-images.md) are kept beside the whole frames, each
window a store of its own inside this one (:meth:`EmbeddingStore.window`, folder
``windows/r0-c0-r1-c1``): the same arrays, records and checks for the frames cropped to the
window, under this store's signature plus the window. A window's embedding depends only on its
pixels, so windows of runs with another tile, halo or margin are read where they coincide.

A store that cannot be written (a read-only mount, no permission) is opened read-only: the
frames it holds are read (and checked); frames it lacks, or holds for other pixels or damaged,
are computed into a temporary store (removed on close) instead, with one warning. A new store is
built under a temporary name beside its path and renamed into place, so two processes making
the same store at once both end up using the one that won, never half of each.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
import weakref
from pathlib import Path

import numpy as np
import torch

from ..model import SAM2Model
from ..model.sam2 import ImageEmbedding
from .embedding_files import (
    CHANNELS_LAST,
    FORMAT,
    FRAME_ARRAYS,
    RECORDS,
    STORE_DTYPES,
    WINDOWS,
    EmbeddingsError,
    EmbeddingsWarning,
    check_format,
    check_structure,
    create,
    create_arrays,
    is_writable,
    layout_of,
    open_group,
    read_records,
    store_bytes,
    window_key,
    window_name,
)
from .embedding_signatures import (
    check_signature_of,
    checksum,
    data_signature,
    embedding_layout,
    frame_fingerprint,
    image_signature,
    model_signature,
)

__all__ = [
    "FORMAT",
    "STORE_DTYPES",
    "EmbeddingStore",
    "EmbeddingsError",
    "EmbeddingsWarning",
    "data_signature",
    "embedding_layout",
    "frame_fingerprint",
    "image_signature",
    "model_signature",
    "store_bytes",
    "store_for",
    "temporary_dtype",
]


class EmbeddingStore:
    """Frame embeddings in a zarr group on disk, one chunk per frame, each frame checked on
    read (see the module's docstring).

    Open with :meth:`open` (a path that may or may not exist yet) or :meth:`temporary` (removed
    on :meth:`close`). ``get(t, pixels=...)`` returns frame ``t``'s :class:`ImageEmbedding`
    (float32), or None if it is not stored, was made from other pixels or is damaged;
    ``put(t, emb, pixels)`` stores it. ``pixels`` is :func:`frame_fingerprint` of the frame.
    """

    def __init__(
        self,
        group,
        path: Path,
        writable: bool = True,
        signature: dict | None = None,
        layout: dict | None = None,
    ) -> None:
        self.group = group
        self.path = path
        self.writable = writable
        self.signature = dict(signature or {})  # what it was opened for (its windows inherit it)
        self._layout = layout
        self._window_stores: dict[tuple[int, int, int, int], EmbeddingStore | None] = {}
        self._finalizer = None
        self._pos: np.ndarray | None = None  # the position encoding, as stored and checked
        self._pos_written = False  # by this object: the store's pos is the model's
        self._warned: set[str] = set()
        self._records = read_records(group[RECORDS])

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
            create(path, signature, num_frames, dtype, layout)  # or another process did
        writable = is_writable(path)
        group = open_group(path, mode="r+" if writable else "r")
        stored = dict(group.attrs)
        check_format(path, stored)
        cls.check_signature(path, stored.get("signature", {}), signature)
        check_structure(path, group, num_frames, layout)
        return cls(group, path, writable, signature, layout)

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
        stored = dict(open_group(path, mode="r").attrs)
        check_format(path, stored)
        return dict(stored.get("signature", {}))

    @staticmethod
    def check_signature(path, stored: dict, expected: dict) -> None:
        """Refuse a store made for other data, another model or another input size."""
        check_signature_of(Path(path), stored, expected)

    @staticmethod
    def check(path, num_frames: int, layout: dict | None = None) -> None:
        """Refuse (:class:`EmbeddingsError`) an existing store that is damaged or made for
        another number of frames or ``layout``, without opening it for writing."""
        path = Path(path)
        group = open_group(path, mode="r")
        stored = dict(group.attrs)
        check_format(path, stored)
        check_structure(path, group, num_frames, layout)
        check_windows(path, stored.get("signature", {}), num_frames, layout)

    @staticmethod
    def can_write(path) -> bool:
        """Whether the store at ``path`` may be written (not a read-only mount, permitted)."""
        return is_writable(Path(path))

    def window(self, window) -> EmbeddingStore | None:
        """The store of one window's embeddings: every frame cropped to ``window`` (min_row,
        min_col, max_row, max_col), kept inside this store (``windows/r0-c0-r1-c1``) with the
        same checks, this store's signature plus the window, its frames and dtype. Made when
        first asked for; None when this store is read-only and holds no such window (said once:
        the caller computes it without keeping it here)."""
        key = tuple(int(v) for v in window)
        if key in self._window_stores:
            return self._window_stores[key]
        path = self.path / WINDOWS / window_name(key)
        store = None
        if path.exists() or self.writable:
            path.parent.mkdir(exist_ok=True)
            signature = {**self.signature, "tile": list(key)}
            try:
                store = EmbeddingStore.open(
                    path, signature, self.num_frames, self.dtype, self._layout
                )
            except EmbeddingsError as e:  # found while working: said, and computed instead
                self._say("damaged window", f"{e}; meanwhile the window is computed, not kept")
        else:
            self._say("windows", f"embeddings store {self.path} cannot be written (read-only) "
                      f"and holds no window {key}: the windows it lacks are computed, not kept "
                      "in it")  # fmt: skip
        self._window_stores[key] = store
        return store

    @property
    def windows_stored(self) -> list[tuple[int, int, int, int]]:
        """The windows this store holds embeddings of (made, whatever their frames)."""
        folder = self.path / WINDOWS
        if not folder.is_dir():
            return []
        names = (window_key(p.name) for p in sorted(folder.iterdir()) if p.is_dir())
        return [key for key in names if key is not None]

    @property
    def is_temporary(self) -> bool:
        """Whether this store is removed on :meth:`close` (made by :meth:`temporary`)."""
        return self._finalizer is not None

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
        if checksum(parts, pos) != int(self._records[t, 1]):
            self._drop(t, "damaged", f"frame {t}'s embedding is damaged (its bytes changed, or a "
                       "chunk was deleted)")  # fmt: skip
            return None

        # In the memory layout the model gave them: the decoder's sums then run in the same
        # order, and a float32 store gives bit-identical results to computing again.
        channels_last = set(self.group.attrs.get(CHANNELS_LAST, ()))

        def tensor(array, name):
            array = torch.from_numpy(np.ascontiguousarray(array)[None]).float()
            array = array.to(device) if device is not None else array
            if name in channels_last:
                return array.contiguous(memory_format=torch.channels_last)
            return array.contiguous()

        features, high_0, high_1 = (tensor(p, n) for p, n in zip(parts, FRAME_ARRAYS))
        return ImageEmbedding(features, (high_0, high_1), tensor(pos[0], "pos"))

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
        layouts = zip((*FRAME_ARRAYS, "pos"), (emb.features, *emb.high_res, emb.pos))
        channels_last = [n for n, x in layouts if _is_channels_last(x)]
        if list(self.group.attrs.get(CHANNELS_LAST, [])) != channels_last:
            self.group.attrs[CHANNELS_LAST] = channels_last
        if FRAME_ARRAYS[0] not in self.group:  # a store made without a layout
            create_arrays(self.group, self.num_frames, self.dtype, layout_of(parts, pos))
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
        record = np.array([pixels or 1, checksum(parts, pos)], dtype=np.uint64)
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

    def _say(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(message + " (said once)", EmbeddingsWarning, stacklevel=4)

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


def check_windows(path: Path, signature: dict, num_frames: int, layout: dict | None) -> None:
    """Refuse a store whose window stores are damaged (format, structure) or were made for
    another window than their folder names: each is checked as a store (about 10 ms each, so
    :meth:`EmbeddingStore.check` does it before a run, and :meth:`EmbeddingStore.window`
    finds it for one window, said and computed instead)."""
    folder = Path(path) / WINDOWS
    if not folder.is_dir():
        return
    for sub in sorted(folder.iterdir()):
        key = window_key(sub.name)
        if key is None or not sub.is_dir():
            continue  # a window being built by another process, or not ours
        group = open_group(sub, mode="r")
        stored = dict(group.attrs)
        check_format(sub, stored)
        check_signature_of(sub, stored.get("signature", {}), {**signature, "tile": list(key)})
        check_structure(sub, group, num_frames, layout)


def _is_channels_last(x: torch.Tensor) -> bool:
    return (
        x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    )


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
