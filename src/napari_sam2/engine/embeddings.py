"""Frame embeddings computed once: in RAM for the most recent frames, and in a zarr store on
disk for every frame seen, so that re-propagation after a correction, the backward pass of
``both``, a return to a slice in the widget — and, with a store kept on disk, the next session or
another machine — never run the image encoder on a frame twice.

A store is a zarr group holding, per frame, the image encoder's output (the top-level
features and the two high-resolution levels the mask decoder reads), one chunk per frame, in
float16 (half the disk; results agree with float32 to a mask IoU of 0.999 or better, see
docs/troubleshooting.md#speed) or float32 (exact). It is tied to what made it by a signature —
the data (shape, dtype, a hash of sampled pixels, the channel and intensity window used), the
model (name, a hash of its weights) and the input size — and a store whose signature differs is
refused, never reused.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..model import SAM2Model
from ..model.sam2 import ImageEmbedding

FORMAT = "napari-sam2 embeddings 1"
STORE_DTYPES = ("float16", "float32")
_HASH_FRAMES = 8  # frames whose pixels go into the data signature
_HASH_VALUES = 1 << 18  # values sampled per frame


class EmbeddingsError(ValueError):
    """An embeddings store that cannot be used: made for other data, model or input size, or
    not an embeddings store at all."""


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
    """The model's name, input size and a hash of its weights (computed once per model)."""
    weights = getattr(model, "_weights_sha256", None)
    if weights is None:
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        weights = model._weights_sha256 = digest.hexdigest()
    cfg = model.config
    return {"model": cfg.name, "image_size": int(cfg.image_size), "weights_sha256": weights}


class EmbeddingStore:
    """Frame embeddings in a zarr group on disk, one chunk per frame.

    Open with :meth:`open` (a path that may or may not exist yet) or :meth:`temporary` (removed
    on :meth:`close`). ``get(t)`` returns frame ``t``'s :class:`ImageEmbedding` (float32) or
    None; ``put(t, emb)`` stores it.
    """

    def __init__(self, group, path: Path) -> None:
        self.group = group
        self.path = path
        self._finalizer = None
        self._done = np.asarray(group["done"][:], dtype=bool)

    @classmethod
    def open(cls, path, signature: dict, num_frames: int, dtype: str = "float16") -> EmbeddingStore:
        """The store at ``path``: created (with ``dtype``) if it does not exist, else checked
        against ``signature`` (:class:`EmbeddingsError` if it was made for something else)."""
        import zarr

        if dtype not in STORE_DTYPES:
            raise EmbeddingsError(f"embeddings dtype must be one of {STORE_DTYPES}, got {dtype!r}")
        path = Path(path)
        if path.exists():
            try:
                group = zarr.open_group(str(path), mode="r+")
                stored = dict(group.attrs)
            except Exception as e:  # zarr raises several types for "not a zarr group"
                raise EmbeddingsError(f"{path} is not an embeddings store: {e}") from e
            _check_format(path, stored)
            cls.check_signature(path, stored.get("signature", {}), signature)
            return cls(group, path)
        group = zarr.open_group(str(path), mode="w")
        group.attrs.update({"format": FORMAT, "signature": signature, "dtype": dtype})
        group.create_array("done", shape=(num_frames,), dtype="bool", fill_value=False)
        return cls(group, path)

    @classmethod
    def temporary(
        cls, num_frames: int, dtype: str = "float16", parent=None, signature: dict | None = None
    ) -> EmbeddingStore:
        """A store in a new temporary folder (under ``parent``), removed by :meth:`close` or
        when garbage-collected. Only its maker uses it, so ``signature`` is optional."""
        folder = Path(tempfile.mkdtemp(prefix="napari-sam2-embeddings-", dir=parent))
        store = cls.open(folder / "embeddings.zarr", signature or {}, num_frames, dtype)
        store._finalizer = weakref.finalize(store, shutil.rmtree, folder, True)
        return store

    @staticmethod
    def read_signature(path) -> dict:
        """The signature an existing store was made with (:class:`EmbeddingsError` if the path
        holds no embeddings store)."""
        import zarr

        path = Path(path)
        try:
            stored = dict(zarr.open_group(str(path), mode="r").attrs)
        except Exception as e:  # zarr raises several types for "not a zarr group"
            raise EmbeddingsError(f"{path} is not an embeddings store: {e}") from e
        _check_format(path, stored)
        return dict(stored.get("signature", {}))

    @staticmethod
    def check_signature(path, stored: dict, expected: dict) -> None:
        """Refuse a store made for other data, another model or another input size."""
        _check_signature(Path(path), stored, expected)

    @property
    def dtype(self) -> str:
        return str(self.group.attrs["dtype"])

    def __contains__(self, t: int) -> bool:
        return bool(self._done[t])

    @property
    def frames_done(self) -> int:
        return int(self._done.sum())

    def get(self, t: int, device=None) -> ImageEmbedding | None:
        if not self._done[t]:
            return None
        g = self.group

        def load(name, index):
            array = torch.from_numpy(np.asarray(g[name][index])).float()
            return array.to(device) if device is not None else array

        return ImageEmbedding(
            load("features", slice(t, t + 1)),
            (load("high_res_0", slice(t, t + 1)), load("high_res_1", slice(t, t + 1))),
            load("pos", slice(0, 1)),
        )

    def put(self, t: int, emb: ImageEmbedding) -> None:
        parts = {
            "features": emb.features,
            "high_res_0": emb.high_res[0],
            "high_res_1": emb.high_res[1],
        }
        if "pos" not in self.group:
            self._create_arrays(emb)
        for name, tensor in parts.items():
            self.group[name][t : t + 1] = tensor.detach().float().cpu().numpy().astype(self.dtype)
        self.group["done"][t] = True
        self._done[t] = True

    def _create_arrays(self, emb: ImageEmbedding) -> None:
        n = len(self._done)
        for name, tensor in (
            ("features", emb.features),
            ("high_res_0", emb.high_res[0]),
            ("high_res_1", emb.high_res[1]),
        ):
            shape = (n, *tensor.shape[1:])
            self.group.create_array(
                name, shape=shape, chunks=(1, *shape[1:]), dtype=self.dtype, compressors=None
            )
        pos = emb.pos.detach().float().cpu().numpy()
        array = self.group.create_array("pos", shape=pos.shape, dtype="float32", compressors=None)
        array[:] = pos

    def close(self) -> None:
        """Remove a temporary store's files (a store at a path of the user's stays)."""
        if self._finalizer is not None:
            self._finalizer()


def _check_format(path: Path, attrs: dict) -> None:
    if attrs.get("format") != FORMAT:
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


def store_for(embeddings, dtype: str, parent, source, model: SAM2Model) -> EmbeddingStore | None:
    """The store a tracker uses: None for ``embeddings=False`` (RAM only); a temporary one for
    None (under ``parent``); the one given; or the one at the path given, checked against
    ``source`` and ``model``."""
    if embeddings is False:
        return None
    if isinstance(embeddings, EmbeddingStore):
        return embeddings
    if embeddings is None:
        return EmbeddingStore.temporary(len(source), dtype, parent=parent)
    signature = {**data_signature(source), **model_signature(model)}
    return EmbeddingStore.open(embeddings, signature, len(source), dtype)


class FrameEmbeddings:
    """The tracker's embeddings: the last ``ram_frames`` in RAM (as computed), every frame
    computed in ``store`` (if any). ``get(t, compute)`` returns frame ``t``'s embedding,
    calling ``compute(t)`` only for a frame never seen."""

    def __init__(self, ram_frames: int = 2, store: EmbeddingStore | None = None) -> None:
        self.ram_frames = max(1, ram_frames)
        self.store = store
        self._ram: OrderedDict[int, ImageEmbedding] = OrderedDict()
        self.computed = 0  # frames encoded (for tests and diagnostics)

    def __len__(self) -> int:
        return len(self._ram)

    def known(self, t: int) -> bool:
        return t in self._ram or (self.store is not None and t in self.store)

    def get(self, t: int, compute: Callable[[int], ImageEmbedding], device=None) -> ImageEmbedding:
        emb = self._ram.get(t)
        if emb is None and self.store is not None:
            emb = self.store.get(t, device)
        if emb is None:
            emb = compute(t)
            self.computed += 1
            if self.store is not None:
                self.store.put(t, emb)
        self._ram[t] = emb
        self._ram.move_to_end(t)
        while len(self._ram) > self.ram_frames:
            self._ram.popitem(last=False)
        return emb

    def clear_ram(self) -> None:
        self._ram.clear()

    def close(self) -> None:
        self._ram.clear()
        if self.store is not None:
            self.store.close()
