"""The tracker's frame embeddings: the most recent ones in RAM, every one computed in an
:class:`~.embeddings.EmbeddingStore` (checked on every read), and, beside a read-only store, a
temporary one for what it cannot hold."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable

from ..model.sam2 import ImageEmbedding
from .embeddings import EmbeddingStore, EmbeddingsWarning


class FrameEmbeddings:
    """The tracker's embeddings: the last ``ram_frames`` in RAM (as computed), every frame
    computed in ``store`` (if any). ``get(t, compute)`` returns frame ``t``'s embedding,
    calling ``compute(t)`` -> (embedding, fingerprint of the frame it was computed from) only for
    a frame not held (or held for other pixels, or damaged).

    ``fingerprint(t)`` is :func:`~.embeddings.frame_fingerprint` of frame ``t`` (read for it),
    checked against the store's record on every read from it. A read-only ``store`` is read;
    what it cannot hold goes to a temporary store made by ``spare()`` (with one warning)."""

    def __init__(
        self,
        ram_frames: int = 2,
        store: EmbeddingStore | None = None,
        fingerprint: Callable[[int], int] | None = None,
        spare: Callable[[], EmbeddingStore] | None = None,
    ) -> None:
        if store is not None and fingerprint is None:
            raise ValueError("a store needs the frames' fingerprint to check what it returns")
        self.ram_frames = max(1, ram_frames)
        self.store = store
        self._fingerprint = fingerprint
        self._make_spare = spare
        self._spare: EmbeddingStore | None = None
        self._ram: OrderedDict[int, ImageEmbedding] = OrderedDict()
        self._pixels: dict[int, int] = {}  # frame -> fingerprint of what its embedding is of
        self.computed = 0  # frames encoded (for tests and diagnostics)

    def __len__(self) -> int:
        return len(self._ram)

    def _stores(self) -> list[EmbeddingStore]:
        return [s for s in (self.store, self._spare) if s is not None]

    def known(self, t: int) -> bool:
        return t in self._ram or any(t in s for s in self._stores())

    def get(
        self,
        t: int,
        compute: Callable[[int], tuple[ImageEmbedding, int]],
        device=None,
        pixels: int | None = None,
    ) -> ImageEmbedding:
        """Frame ``t``'s embedding: from RAM, else from a store (checked against the frame's
        fingerprint: ``pixels`` when the caller has just taken it, else taken now), else
        ``compute(t)`` -> (embedding, fingerprint)."""
        emb = self._ram.get(t)
        if emb is None:
            for store in self._stores():
                if t in store:
                    pixels = self._fingerprint(t) if pixels is None else pixels
                    emb = store.get(t, device, pixels)
                    if emb is not None:
                        self._pixels[t] = pixels
                        break
        if emb is None:
            emb, pixels = compute(t)
            self._pixels[t] = pixels
            self.computed += 1
            target = self._writable_store()
            if target is not None:
                target.put(t, emb, pixels)
        self._ram[t] = emb
        self._ram.move_to_end(t)
        while len(self._ram) > self.ram_frames:
            self._ram.popitem(last=False)
        return emb

    def pixels(self, t: int) -> int | None:
        """The fingerprint of the pixels frame ``t``'s last embedding was made from."""
        return self._pixels.get(t)

    def fingerprint(self, t: int) -> int:
        """The fingerprint of frame ``t``'s pixels now (the frame is read for it)."""
        return self._fingerprint(t)

    def _writable_store(self) -> EmbeddingStore | None:
        if self.store is None or self.store.writable:
            return self.store
        if self._spare is None and self._make_spare is not None:
            self._spare = self._make_spare()
            missing = self.store.num_frames - self.store.frames_done
            warnings.warn(
                f"embeddings store {self.store.path} cannot be written (read-only): the frames "
                f"it lacks ({missing} of {self.store.num_frames}), or holds damaged or for other "
                "pixels, are computed into a temporary store removed at the end, not into it",
                EmbeddingsWarning,
                stacklevel=4,
            )
        return self._spare

    def clear_ram(self) -> None:
        self._ram.clear()

    def close(self) -> None:
        self._ram.clear()
        for store in self._stores():
            store.close()
