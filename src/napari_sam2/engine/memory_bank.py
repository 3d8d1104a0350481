"""What the tracker remembers about each object, kept bounded.

Per object and frame, tracking produces a :class:`FrameRecord`: the low-resolution mask logits
(the result, and the prompt a later correction on that frame starts from), the object pointer,
the object score, and the mask memory (bfloat16, as the official predictor stores it). A
tracked record also says what it was computed from (``inputs``: the serial numbers of the
records it attended to, in their slots, the frame's pixel fingerprint and the model's state),
so that a propagation passing the frame again with the same inputs keeps it instead of
computing it again (see :func:`~.conditioning.MemoryPlan.inputs`).

- Conditioning frames (frames with a prompt) stay in RAM: every later frame attends to them.
- Tracked frames without a prompt live in a :class:`SpillingStore`: the most recent ones (what
  the next frame reads: 6 mask memories, 15 object pointers) in RAM, older ones written to a
  temporary directory. They are read back only for a correction on, or a propagation restarted
  next to, an old frame. RAM therefore does not grow with the length of the stack; disk grows by
  about 0.75 MiB per object and frame at 1024² input (0.5 MiB memory + 0.25 MiB logits).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

_SERIALS = itertools.count(1)


def _serial() -> int:
    return next(_SERIALS)


@dataclass(frozen=True)
class FramePrompt:
    """One object's prompt on one frame, in the model's input frame.

    Either clicks/box corners (``points`` (1, P, 2) as (x, y), ``labels`` (1, P); box corners
    first with labels 2 and 3) or a mask (``is_mask``; the mask itself is not kept: once it has
    given the frame's record, nothing reads it again).
    """

    points: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    is_mask: bool = False

    @property
    def num_points(self) -> int:
        return 0 if self.points is None else self.points.shape[1]


@dataclass(frozen=True)
class FrameRecord:
    """One object's tracking output on one frame (batch axis of 1 everywhere)."""

    low_res: torch.Tensor  # (1, 1, 4E, 4E) float32 mask logits
    pointer: torch.Tensor  # (1, C) float32 object pointer
    score: torch.Tensor  # (1, 1) object-score logit (> 0: the object is present)
    memory: torch.Tensor | None = None  # (1, mem_dim, E, E) bfloat16; None until encoded
    # What a tracked record was computed from (MemoryPlan.inputs); None for a prompt's record.
    inputs: tuple | None = None
    # Unique in the process, kept through spilling: what a later record's ``inputs`` name.
    serial: int = field(default_factory=_serial)

    def with_memory(self, memory: torch.Tensor) -> FrameRecord:
        return replace(self, memory=memory.to(torch.bfloat16), serial=_serial())

    def select(self, i: int, inputs: tuple | None = None) -> FrameRecord:
        """Row ``i`` of a batched record, as a record of one object (computed from ``inputs``),
        in tensors of its own: a view would keep the whole batch alive in RAM, and
        ``torch.save`` would write the whole batch's storage into every spilled record."""
        s = slice(i, i + 1)
        memory = None if self.memory is None else self.memory[s].clone()
        return FrameRecord(
            self.low_res[s].clone(),
            self.pointer[s].clone(),
            self.score[s].clone(),
            memory,
            inputs,
        )


_SAVED = ("low_res", "pointer", "score", "memory", "inputs", "serial")


class SpillingStore:
    """A frame -> :class:`FrameRecord` mapping that keeps at most ``capacity`` records in RAM
    (least recently used spill first) and the rest in files under a private temporary directory,
    removed when the store is cleared or garbage-collected."""

    def __init__(self, capacity: int = 16, spill_dir: str | Path | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._parent = spill_dir
        self._ram: OrderedDict[int, FrameRecord] = OrderedDict()
        self._spilled: set[int] = set()
        self._dir: Path | None = None
        self._finalizer = None

    def __contains__(self, frame: int) -> bool:
        return frame in self._ram or frame in self._spilled

    def __len__(self) -> int:
        return len(self._ram) + len(self._spilled)

    @property
    def in_ram(self) -> int:
        return len(self._ram)

    @property
    def on_disk(self) -> int:
        return len(self._spilled)

    def frames(self) -> list[int]:
        return sorted(set(self._ram) | self._spilled)

    def get(self, frame: int) -> FrameRecord | None:
        if frame in self._ram:
            self._ram.move_to_end(frame)
            return self._ram[frame]
        if frame not in self._spilled:
            return None
        path = self._path(frame)
        record = FrameRecord(**torch.load(path, weights_only=True))
        self._spilled.discard(frame)
        path.unlink()
        self._put_in_ram(frame, record)
        return record

    def put(self, frame: int, record: FrameRecord) -> None:
        if frame in self._spilled:
            self._spilled.discard(frame)
            self._path(frame).unlink()
        self._put_in_ram(frame, record)

    def pop(self, frame: int) -> FrameRecord | None:
        record = self.get(frame)
        self._ram.pop(frame, None)
        return record

    def clear(self) -> None:
        self._ram.clear()
        self._spilled.clear()
        if self._finalizer is not None:
            self._finalizer()  # removes the directory
            self._finalizer, self._dir = None, None

    def _put_in_ram(self, frame: int, record: FrameRecord) -> None:
        self._ram[frame] = record
        self._ram.move_to_end(frame)
        while len(self._ram) > self.capacity:
            old, old_record = self._ram.popitem(last=False)
            torch.save({k: getattr(old_record, k) for k in _SAVED}, self._path(old))
            self._spilled.add(old)

    def _path(self, frame: int) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="napari-sam2-memory-", dir=self._parent))
            self._finalizer = weakref.finalize(self, shutil.rmtree, self._dir, True)
        return self._dir / f"{frame}.pt"


@dataclass
class ObjectMemory:
    """Everything the tracker keeps for one object."""

    obj_id: int
    history_capacity: int = 16
    spill_dir: str | Path | None = None
    prompts: dict[int, FramePrompt] = field(default_factory=dict)
    # Prompted frames whose result is shown but whose mask memory is not encoded yet (encoded
    # when propagation starts, so rapid clicks on one frame cost no memory encoding).
    pending: dict[int, FrameRecord] = field(default_factory=dict)
    cond: dict[int, FrameRecord] = field(default_factory=dict)  # prompted frames, encoded
    tracked: dict[int, bool] = field(default_factory=dict)  # frame -> tracked in reverse
    history: SpillingStore = field(init=False)

    def __post_init__(self) -> None:
        self.history = SpillingStore(self.history_capacity, self.spill_dir)

    def output(self, frame: int) -> FrameRecord | None:
        """The current result on ``frame``: a pending prompt, a conditioning frame or a tracked
        frame, in that order."""
        for source in (self.pending, self.cond):
            if frame in source:
                return source[frame]
        return self.history.get(frame)

    def forget(self) -> None:
        self.prompts.clear()
        self.pending.clear()
        self.cond.clear()
        self.tracked.clear()
        self.history.clear()
