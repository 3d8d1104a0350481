"""What each object attends to on a frame, and many objects conditioned on it in batches.

For every object, SAM 2 reads its conditioning frames' mask memories, the memories of the
``num_maskmem - 1`` frames before this one in the direction of travel, and up to
``max_obj_ptrs`` object pointers (conditioning frames first, then the recent frames).
:func:`memory_plan` lists those records; :func:`batches` groups objects whose plans have the
same size — their memories stack without padding — into batches of a bounded size, so that peak
memory does not grow with the number of objects; :func:`condition` runs memory attention for one
batch. A mask prompt's frame is not conditioned: :func:`mask_as_output` makes its record from the
mask itself.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model import SAM2Model
from ..model.common import sine_position_encoding
from ..model.sam2 import MEMORY_MASK_BIAS, MEMORY_MASK_SCALE, ImageEmbedding
from .memory_bank import FrameRecord, ObjectMemory


@dataclass(frozen=True)
class MemoryPlan:
    """The records one object attends to on one frame.

    mask_memories: (temporal slot, record); slot ``num_maskmem - 1`` is a conditioning frame,
    lower slots are recent frames (slot 0 the furthest back). pointers: (frame offset, record).
    """

    obj: ObjectMemory
    mask_memories: tuple[tuple[int, FrameRecord], ...]
    pointers: tuple[tuple[int, FrameRecord], ...]

    @property
    def size(self) -> tuple[int, int]:
        """(mask memories, pointers): plans of one size stack without padding."""
        return len(self.mask_memories), len(self.pointers)

    def inputs(self, frame_state: tuple) -> tuple:
        """Everything a record tracked from this plan depends on: ``frame_state`` (the model's
        :meth:`~.SAM2Model.state_token` and the fingerprint of the frame's pixels) and each
        record attended to, by serial number, in its slot. A record kept with equal inputs is
        what tracking the frame again would compute."""
        mems = tuple((slot, r.serial) for slot, r in self.mask_memories)
        return frame_state, mems, tuple((offset, r.serial) for offset, r in self.pointers)


def memory_plan(
    obj: ObjectMemory,
    frame: int,
    reverse: bool,
    *,
    num_maskmem: int,
    max_ptrs: int,
    num_frames: int,
) -> MemoryPlan:
    """The records ``obj`` attends to on ``frame`` (no tensor work: references only)."""
    mems = [(num_maskmem - 1, r) for r in obj.cond.values()]
    for t_pos in range(1, num_maskmem):
        t_rel = num_maskmem - t_pos  # frames back along the direction of travel
        prev = obj.history.get(frame + t_rel if reverse else frame - t_rel)
        if prev is not None:
            mems.append((num_maskmem - t_pos - 1, prev))
    sign = -1 if reverse else 1
    ptrs = [
        ((frame - t) * sign, r)
        for t, r in obj.cond.items()
        if ((t >= frame) if reverse else (t <= frame))
    ]
    for t_diff in range(1, max_ptrs):
        t = frame + t_diff if reverse else frame - t_diff
        if not 0 <= t < num_frames:
            break
        r = obj.history.get(t)
        if r is not None:
            ptrs.append((t_diff, r))
    return MemoryPlan(obj, tuple(mems), tuple(ptrs))


GPU_OBJECT_BATCH = 16
# On the CPU a batch holds about as many frame tokens as one object at 1024² input (64² tokens).
CPU_BATCH_TOKENS = 4096


def default_object_batch(device: torch.device, embedding_size: int, threads: int) -> int:
    """How many objects are computed together when the user does not say: 16 on a GPU.

    On the CPU it is about the threads: every tensor operation ends with the ``threads``
    meeting, and one object's memory attention, decoder and memory encoder are several hundred
    operations — small ones at small inputs, where on a busy machine each meeting waits for a
    thread that is not running (4 objects at 512² on 2 threads: 1.7× faster as one batch than
    one at a time, on a shared machine). At 1024² batches were 3-7 % slower, and with one
    thread nothing waits while a batch's working set leaves the cache (4 objects at 512²: 7 %
    more CPU). So with several threads a batch holds about :data:`CPU_BATCH_TOKENS` frame
    tokens — 1 object at 1024², 4 at 512², 16 at 256² and below — and with one thread, 1
    (docs/troubleshooting.md#speed). Results equal any other batching's up to float rounding."""
    if device.type != "cpu":
        return GPU_OBJECT_BATCH
    if threads <= 1:
        return 1
    return max(1, min(GPU_OBJECT_BATCH, CPU_BATCH_TOKENS // embedding_size**2))


def batches(plans: Iterable[MemoryPlan], max_batch: int) -> list[list[MemoryPlan]]:
    """Plans grouped by size (first appearance order), each group cut into batches of at most
    ``max_batch``: memories within a batch stack without padding."""
    groups: dict[tuple[int, int], list[MemoryPlan]] = {}
    for plan in plans:
        groups.setdefault(plan.size, []).append(plan)
    return [
        group[i : i + max_batch]
        for group in groups.values()
        for i in range(0, len(group), max_batch)
    ]


def condition(
    model: SAM2Model,
    plans: list[MemoryPlan],
    features: torch.Tensor,
    pos: torch.Tensor,
    max_ptrs: int,
    frame_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """The frame's (1, C, E, E) ``features`` conditioned on each plan's memory: (B, C, E, E).
    All plans must have the same :attr:`MemoryPlan.size`. ``frame_tokens``: the frame's
    :meth:`~napari_sam2.model.SAM2Model.memory_frame_tokens`, shared by every batch."""
    cfg = model.config
    if len({p.size for p in plans}) != 1:
        raise ValueError("condition() needs plans of one size; group them with batches()")
    memory, memory_pos = [], []
    grid = None
    n_ptr_tokens = 0
    for plan in plans:
        tokens, token_pos = [], []
        for slot, r in plan.mask_memories:
            t = r.memory.flatten(2).transpose(1, 2)[0].float()  # (EE, mem_dim)
            if grid is None:
                grid = _memory_pos(t.shape[0], cfg.mem_dim, t.device)
            tokens.append(t)
            token_pos.append(grid + model.maskmem_tpos_enc[slot].reshape(1, -1))
        if plan.pointers:
            split = cfg.hidden_dim // cfg.mem_dim
            offsets = torch.tensor([o for o, _ in plan.pointers], device=features.device)
            ptr = torch.cat([r.pointer for _, r in plan.pointers]).reshape(-1, cfg.mem_dim)
            ptr_pos = model.object_pointer_pos(offsets, max(max_ptrs - 1, 1))
            tokens.append(ptr)  # (n * split, mem_dim): each pointer split into mem_dim pieces
            token_pos.append(ptr_pos.repeat_interleave(split, dim=0))
            n_ptr_tokens = ptr.shape[0]
        memory.append(torch.cat(tokens))
        memory_pos.append(torch.cat(token_pos))
    return model.condition_on_memory(
        features,
        pos,
        torch.stack(memory),
        torch.stack(memory_pos),
        n_ptr_tokens,
        frame_tokens=frame_tokens,
    )


class ConditionedCache:
    """The memory-conditioned features of the last few objects clicked on a tracked frame, so
    that the next click there skips memory attention (seconds per object at 1024 on a CPU, for
    a decoder's tens of milliseconds). Exact: an entry is used only when the object, the frame's
    features tensor, the precision and every record its plan attends to are the very same
    objects as when it was computed (records are immutable; a changed memory is a new record).
    At most ``size`` objects are kept, the least recently clicked dropped first."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._entries: OrderedDict[int, tuple] = OrderedDict()

    def condition(self, model: SAM2Model, plan: MemoryPlan, emb: ImageEmbedding, max_ptrs: int):
        """:func:`condition` of one plan on ``emb``, computed or read back."""
        key = (plan.obj, emb.features, model.precision, plan.mask_memories, plan.pointers)
        entry = self._entries.get(plan.obj.obj_id)
        if entry is not None and _same_inputs(entry[0], key):
            self._entries.move_to_end(plan.obj.obj_id)
            return entry[1]
        features = condition(model, [plan], emb.features, emb.pos, max_ptrs)
        self._entries[plan.obj.obj_id] = (key, features)
        self._entries.move_to_end(plan.obj.obj_id)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return features

    def drop(self, obj_id: int | None = None) -> None:
        """Forget one object's entry (None: all)."""
        if obj_id is None:
            self._entries.clear()
        else:
            self._entries.pop(obj_id, None)


def _same_inputs(a: tuple, b: tuple) -> bool:
    """Whether two (object, features, precision, memories, pointers) keys name the same
    inputs: identical objects and tensors, equal slots and offsets."""
    if a[0] is not b[0] or a[1] is not b[1] or a[2] != b[2]:
        return False
    return all(
        len(x) == len(y) and all(i == j and r is s for (i, r), (j, s) in zip(x, y))
        for x, y in ((a[3], b[3]), (a[4], b[4]))
    )


def _memory_pos(n: int, dim: int, device) -> torch.Tensor:
    """(n, dim) sine encoding of the square memory grid (the memory encoder's own PE)."""
    side = int(round(n**0.5))
    return sine_position_encoding(side, side, dim, device).flatten(1).transpose(0, 1)


def mask_as_output(model: SAM2Model, emb: ImageEmbedding, mask: torch.Tensor) -> FrameRecord:
    """The record of (B, 1, S, S) mask prompts on a frame: the masks are taken as the answer
    itself; only the object pointers come from the decoder (prompted by the masks, on features
    without memory). Returns the batch's record (batch axis B)."""
    high = mask * MEMORY_MASK_SCALE + MEMORY_MASK_BIAS
    low_size = model.config.low_res_mask_size
    low = F.interpolate(
        high, size=(low_size, low_size), mode="bilinear", align_corners=False, antialias=True
    )
    b = mask.shape[0]
    high_res = tuple(h.expand(b, -1, -1, -1) for h in emb.high_res)
    _, _, _, pointer, _ = model.decode_tracked(
        emb.features.expand(b, -1, -1, -1),
        high_res,
        None,
        None,
        model.mask_downsample(mask),
        multimask=False,
    )
    present = (mask.flatten(1) > 0).any(dim=1, keepdim=True).float()  # (B, 1)
    score = MEMORY_MASK_SCALE * present + MEMORY_MASK_BIAS
    pointer = present * pointer + (1 - present) * model.no_obj_ptr
    return FrameRecord(low, pointer, score)


def commit_pending(model: SAM2Model, objects: Iterable[ObjectMemory], embedding, batch: int):
    """Encode the mask memory of every prompted frame of ``objects`` not yet encoded (``batch``
    objects at a time; ``embedding(frame)`` gives the frame's embedding): from the upscaled
    low-res logits, binarised, as the official preflight does."""
    by_frame: dict[int, list[ObjectMemory]] = {}
    for obj in objects:
        for frame in obj.pending:
            by_frame.setdefault(frame, []).append(obj)
    for frame, objs in sorted(by_frame.items()):
        emb = embedding(frame)
        projected = model.memory_frame_projection(emb.features)
        for start in range(0, len(objs), batch):
            chunk = objs[start : start + batch]
            records = [o.pending[frame] for o in chunk]
            low = torch.cat([r.low_res for r in records])
            score = torch.cat([r.score for r in records])
            memory, _ = model.encode_memory(
                emb.features, model.upscale_masks(low), score, True, projected
            )
            for i, (obj, record) in enumerate(zip(chunk, records)):
                obj.cond[frame] = record.with_memory(memory[i : i + 1].clone())
                del obj.pending[frame]
                obj.history.pop(frame)
