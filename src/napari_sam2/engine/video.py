"""VideoTracker: SAM 2's streaming memory over any stack — a 3-D volume or a time-lapse.

Objects prompted on a few frames are followed through the stack. All objects are computed in one
batch per frame; frames are read, preprocessed and embedded one at a time (the next one prepared
in the background); memory per object is bounded (see :mod:`.memory_bank`).

Behaviour follows Meta's ``SAM2VideoPredictor`` (sam2 1.1.0) built with
``add_all_frames_to_correct_as_cond=True`` — the setting of Meta's own web demo, under which a
correction click on a tracked frame becomes a conditioning frame and survives re-propagation.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..model import SAM2Model
from ..model.common import sine_position_encoding
from ..model.sam2 import MEMORY_MASK_BIAS, MEMORY_MASK_SCALE, NO_OBJECT_LOGIT, ImageEmbedding
from .frames import FrameSource, FrameSourceError, Prefetcher
from .memory_bank import FramePrompt, FrameRecord, ObjectMemory
from .preprocess import DEFAULT_PERCENTILES, IntensityWindow
from .prompts import Prompt, PromptError, mask_prompt, to_model_points

DIRECTIONS = ("forward", "backward", "both")


@dataclass(frozen=True)
class FrameResult:
    """All objects' masks on one frame.

    logits: (N, H, W) float32 at the frame's resolution, one per object in ``obj_ids`` order;
    -1024 where an object is judged absent or has no result on this frame.
    """

    frame: int
    obj_ids: tuple[int, ...]
    logits: np.ndarray

    @property
    def masks(self) -> np.ndarray:
        """(N, H, W) bool."""
        return self.logits > 0


class VideoTracker:
    """Track objects through a stack with SAM 2.

    ``frames``: (T, H, W) or (T, H, W, C) — numpy, dask, zarr, a tifffile memmap or a list of
    frames. uint8 frames are preprocessed as the official video predictor does; other dtypes are
    mapped by one intensity ``window`` for the whole stack (computed from a few frames by
    ``percentiles`` when not given). ``channel`` picks the channel of multichannel data.
    """

    def __init__(
        self,
        model: SAM2Model,
        frames,
        *,
        channel: int = 0,
        window: IntensityWindow | None = None,
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
        spill_dir=None,
        feature_cache: int = 2,
    ) -> None:
        self.model = model
        cfg = model.config
        self.source = FrameSource(
            frames,
            image_size=cfg.image_size,
            channel=channel,
            window=window,
            percentiles=percentiles,
        )
        self._prefetch = Prefetcher(self.source.prepare)
        self._features: OrderedDict[int, ImageEmbedding] = OrderedDict()
        self._feature_cache = max(1, feature_cache)
        self._spill_dir = spill_dir
        self._objects: dict[int, ObjectMemory] = {}
        self._new_prompt_frames: set[int] = set()
        self._resume: dict[bool, int | None] = {False: None, True: None}
        # The passes still to run of an interrupted propagate() call, keyed by its arguments:
        # the same call continues them (and nothing else) as long as no prompt changed.
        self._unfinished: tuple[tuple, list[tuple[int, int, bool]]] | None = None
        self._closed = False
        # Object pointers reach back min(T, 16) - 1 frames; mask memories num_maskmem - 1.
        self._max_ptrs = min(len(self.source), cfg.max_obj_ptrs)
        self._history_capacity = max(cfg.num_maskmem, self._max_ptrs) + 1

    # ------------------------------------------------------------------ properties
    @property
    def num_frames(self) -> int:
        return len(self.source)

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(H, W) of every frame."""
        return self.source.frame_shape

    @property
    def obj_ids(self) -> tuple[int, ...]:
        """Object ids in the order results list them (the order they were first prompted)."""
        return tuple(self._objects)

    def prompted_frames(self, obj_id: int | None = None) -> list[int]:
        objs = self._objects.values() if obj_id is None else [self._object(obj_id)]
        return sorted({f for o in objs for f in o.prompts})

    def memory_stats(self) -> dict[str, int]:
        """How many per-frame records are held: conditioning/pending (RAM), tracked in RAM,
        tracked spilled to disk, and cached frame embeddings."""
        objs = self._objects.values()
        return {
            "conditioning": sum(len(o.cond) + len(o.pending) for o in objs),
            "tracked_in_ram": sum(o.history.in_ram for o in objs),
            "tracked_on_disk": sum(o.history.on_disk for o in objs),
            "cached_embeddings": len(self._features),
        }

    # ------------------------------------------------------------------ prompts
    @torch.inference_mode()
    def add_prompt(
        self,
        frame: int,
        obj_id: int,
        points=None,
        labels=None,
        box=None,
        mask=None,
        *,
        replace: bool = False,
    ) -> FrameResult:
        """Prompt object ``obj_id`` on ``frame`` and return that frame's result at once.

        points (N, 2) (row, col) with labels (N,) 1/0; box (min_row, min_col, max_row, max_col);
        mask (H, W) bool. Clicks add to the object's earlier clicks on the same frame and refine
        its current mask there; with ``replace`` they replace the earlier prompt and start from
        the frame's tracked mask (if any), so the result depends only on the prompt given. A box
        or a mask replaces the object's prompt on that frame (a box comes before clicks: give
        later clicks in further calls). Object ids are positive integers; they become label
        values.
        """
        self._check_open()
        frame = self.source.check_index(frame)
        obj_id = _check_obj_id(obj_id)
        shape = self.frame_shape
        prompt = self._build_prompt(frame, obj_id, shape, points, labels, box, mask, replace)
        obj = self._objects.get(obj_id)
        if obj is None:  # registered only once the prompt has given a result
            obj = ObjectMemory(obj_id, self._history_capacity, self._spill_dir)
        is_new_frame = frame not in obj.tracked
        reverse = obj.tracked.get(frame, False)
        emb = self._embedding(frame)
        if prompt.mask is not None:
            record = self._mask_as_output(emb, prompt.mask)
        else:
            # Clicks that add to earlier ones refine the frame's current mask (as the official
            # predictor does); a replaced prompt starts again from the tracked mask, so that
            # removing a click gives what the remaining clicks alone would give.
            previous = obj.history.get(frame) if replace else obj.output(frame)
            prev_logits = None
            if previous is not None:
                prev_logits = previous.low_res.clamp(-32.0, 32.0)
            if is_new_frame:
                features = self.model.without_memory(emb.features)
            else:
                features = self._condition([obj], frame, reverse, emb)
            _, _, best, pointer, score = self.model.decode_tracked(
                features,
                emb.high_res,
                prompt.points,
                prompt.labels,
                prev_logits,
                multimask=prompt.num_points <= 1,
            )
            record = FrameRecord(best, pointer, score)
        self._objects.setdefault(obj_id, obj)
        obj.prompts[frame] = prompt
        obj.pending[frame] = record
        self._new_prompt_frames.add(frame)
        self._unfinished = None
        return self.result(frame)

    @torch.inference_mode()
    def clear_prompts(self, frame: int, obj_id: int) -> FrameResult:
        """Remove ``obj_id``'s prompt on ``frame``. Its result there is kept as an ordinary
        tracked frame until the next propagation recomputes it."""
        self._check_open()
        frame = self.source.check_index(frame)
        obj = self._object(obj_id)
        self._unfinished = None
        obj.prompts.pop(frame, None)
        obj.pending.pop(frame, None)
        record = obj.cond.pop(frame, None)
        if record is not None:
            obj.history.put(frame, record)
            obj.tracked.pop(frame, None)
        return self.result(frame)

    def remove_object(self, obj_id: int) -> None:
        """Forget an object entirely (prompts, memory, results)."""
        self._check_open()
        self._object(obj_id).forget()
        del self._objects[obj_id]
        self._unfinished = None

    def reset(self) -> None:
        """Forget all objects and prompts; keep the frame source."""
        for obj in self._objects.values():
            obj.forget()
        self._objects.clear()
        self._features.clear()
        self._new_prompt_frames.clear()
        self._resume = {False: None, True: None}
        self._unfinished = None

    def close(self) -> None:
        """Release the prefetch thread and spilled memory files. The tracker cannot be used
        afterwards (closing twice is fine)."""
        self.reset()
        self._prefetch.close()
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(
                "this VideoTracker is closed (close() released its memory and threads); create a "
                "new VideoTracker to track again"
            )

    # ------------------------------------------------------------------ propagation
    def propagate(
        self, direction: str = "forward", start: int | None = None, stop: int | None = None
    ) -> Iterator[FrameResult]:
        """Follow every object through the stack, yielding one :class:`FrameResult` per frame.

        forward: from ``start`` up to ``stop`` (default: the last frame).
        backward: from ``start`` down to ``stop`` (default: frame 0).
        both: forward, then backward; ``start``/``stop`` bound the range (default: the whole
        stack) — forward from the first prompted frame, backward from the last. Frames between
        prompted frames are yielded twice; the backward result is the final one, as with the
        official "propagate, then propagate in reverse".

        ``start`` defaults to the earliest (forward) or latest (backward) frame prompted since
        the last propagation, or where an interrupted propagation stopped, or else the
        earliest/latest prompted frame. Stopping the iteration between frames (cancel) keeps
        every result yielded so far; the same call made again (same arguments, no prompt changed
        in between) continues exactly where it stopped and gives what one uninterrupted call
        gives — for ``both``, a finished forward pass is not run again.
        """
        passes = self.plan(direction, start, stop)
        return self._propagate((direction, start, stop), passes)

    def plan(
        self, direction: str = "forward", start: int | None = None, stop: int | None = None
    ) -> list[tuple[int, int, bool]]:
        """The passes :meth:`propagate` would run, as (first, last, reverse) triples;
        :func:`frames_in` counts the frames it will yield (for progress bars)."""
        self._check_open()
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        call = (direction, start, stop)
        start = None if start is None else self.source.check_index(start)
        stop = None if stop is None else self.source.check_index(stop)
        self._check_ready()
        if self._unfinished is not None and self._unfinished[0] == call:
            return list(self._unfinished[1])
        return plan_passes(direction, start, stop, self.num_frames, self._default_start)

    def _propagate(self, call, passes):
        for i, (first, last, reverse) in enumerate(passes):
            yield from self._pass(first, last, reverse, call, passes[i + 1 :])
        self._unfinished = None
        self._new_prompt_frames.clear()

    def _default_start(self, reverse: bool) -> int:
        candidates = set(self._new_prompt_frames)
        if self._resume[reverse] is not None:
            candidates.add(self._resume[reverse])
        if not candidates:
            candidates = {f for o in self._objects.values() for f in o.cond}
        return max(candidates) if reverse else min(candidates)

    @torch.inference_mode()
    def _pass(self, first, last, reverse, call, later) -> Iterator[FrameResult]:
        self._check_open()
        self._commit_pending()
        step = -1 if reverse else 1
        order = range(first, last + step, step)
        self._resume[reverse] = first
        for i, frame in enumerate(order):
            if i + 1 < len(order):
                self._prefetch.request(order[i + 1])
            self._track_frame(frame, reverse)
            self._new_prompt_frames.discard(frame)
            more = i + 1 < len(order)
            self._resume[reverse] = frame + step if more else None
            rest = [(frame + step, last, reverse)] if more else []
            self._unfinished = (call, rest + list(later)) if rest or later else None
            yield self.result(frame)
        self._resume[reverse] = None

    def _track_frame(self, frame: int, reverse: bool) -> None:
        todo = [o for o in self._objects.values() if frame not in o.cond]
        if todo:
            emb = self._embedding(frame)
            b = len(todo)
            features = self._condition(todo, frame, reverse, emb)
            high_res = tuple(h.expand(b, -1, -1, -1) for h in emb.high_res)
            _, _, best, pointer, score = self.model.decode_tracked(
                features, high_res, None, None, None, multimask=True
            )
            memory, _ = self.model.encode_memory(
                emb.features.expand(b, -1, -1, -1),
                self.model.upscale_masks(best),
                score,
                binarize=False,
            )
            memory = memory.to(torch.bfloat16)
            for i, obj in enumerate(todo):
                s = slice(i, i + 1)
                obj.history.put(frame, FrameRecord(best[s], pointer[s], score[s], memory[s]))
        for obj in self._objects.values():
            obj.tracked[frame] = reverse

    def _commit_pending(self) -> None:
        """Encode the mask memory of every prompted frame not yet encoded (one batch per frame):
        from the upscaled low-res logits, binarised, as the official preflight does."""
        by_frame: dict[int, list[ObjectMemory]] = {}
        for obj in self._objects.values():
            for frame in obj.pending:
                by_frame.setdefault(frame, []).append(obj)
        for frame, objs in sorted(by_frame.items()):
            emb = self._embedding(frame)
            records = [o.pending[frame] for o in objs]
            low = torch.cat([r.low_res for r in records])
            score = torch.cat([r.score for r in records])
            memory, _ = self.model.encode_memory(
                emb.features.expand(len(objs), -1, -1, -1),
                self.model.upscale_masks(low),
                score,
                binarize=True,
            )
            for i, (obj, record) in enumerate(zip(objs, records)):
                obj.cond[frame] = record.with_memory(memory[i : i + 1])
                del obj.pending[frame]
                obj.history.pop(frame)

    # ------------------------------------------------------------------ internals
    def _check_ready(self) -> None:
        if not self._objects:
            raise PromptError("no objects to track: add a prompt with add_prompt() first")
        empty = [o.obj_id for o in self._objects.values() if not (o.cond or o.pending)]
        if empty:
            raise PromptError(
                f"object(s) {empty} have no prompt on any frame; add one or remove_object()"
            )

    def _object(self, obj_id: int) -> ObjectMemory:
        try:
            return self._objects[obj_id]
        except KeyError:
            raise KeyError(
                f"unknown object id {obj_id!r}; tracked objects are {list(self._objects)}"
            ) from None

    @torch.inference_mode()
    def embed(self, frame: int) -> None:
        """Compute and cache the embedding of ``frame`` (e.g. while the user looks at it)."""
        self._check_open()
        self._embedding(self.source.check_index(frame))

    def _embedding(self, frame: int) -> ImageEmbedding:
        emb = self._features.get(frame)
        if emb is None:
            x = self._prefetch.get(frame).to(self.model.device)
            emb = self.model.encode_image(x)
            self._features[frame] = emb
            while len(self._features) > self._feature_cache:
                self._features.popitem(last=False)
        self._features.move_to_end(frame)
        return emb

    def _build_prompt(self, frame, obj_id, shape, points, labels, box, mask, replace):
        cfg = self.model.config
        if mask is not None:
            if points is not None or box is not None:
                raise PromptError("give either a mask or points/box in one add_prompt call")
            try:
                m = mask_prompt(mask, shape)
            except PromptError as e:
                raise PromptError(f"object {obj_id}, frame {frame}: {e}") from None
            t = torch.from_numpy(m).float()[None, None].to(self.model.device)
            s = cfg.image_size
            if t.shape[-2:] != (s, s):
                t = F.interpolate(
                    t, size=(s, s), mode="bilinear", align_corners=False, antialias=True
                )
            t = (t >= 0.5).float()
            return FramePrompt(mask=t)
        new = Prompt.build(shape, points, labels, box)
        coords, lbl = to_model_points(new, shape, cfg.image_size, self.model.device)
        if coords is None:
            raise PromptError("give points (with labels), a box or a mask")
        obj = self._objects.get(obj_id)
        old = None if obj is None else obj.prompts.get(frame)
        if old is not None and old.points is not None and box is None and not replace:
            coords = torch.cat((old.points, coords), dim=1)
            lbl = torch.cat((old.labels, lbl), dim=1)
        return FramePrompt(points=coords, labels=lbl)

    def _mask_as_output(self, emb: ImageEmbedding, mask: torch.Tensor) -> FrameRecord:
        """A mask prompt is taken as the answer itself; only the object pointer comes from the
        decoder (prompted by the mask, on features without memory)."""
        model = self.model
        high = mask * MEMORY_MASK_SCALE + MEMORY_MASK_BIAS
        low_size = model.config.low_res_mask_size
        low = F.interpolate(
            high, size=(low_size, low_size), mode="bilinear", align_corners=False, antialias=True
        )
        _, _, _, pointer, _ = model.decode_tracked(
            emb.features, emb.high_res, None, None, model.mask_downsample(mask), multimask=False
        )
        present = (mask.flatten(1) > 0).any(dim=1, keepdim=True).float()  # (1, 1)
        score = MEMORY_MASK_SCALE * present + MEMORY_MASK_BIAS
        pointer = present * pointer + (1 - present) * model.no_obj_ptr
        return FrameRecord(low, pointer, score)

    def _condition(self, objs, frame, reverse, emb: ImageEmbedding) -> torch.Tensor:
        """Features of ``frame`` conditioned on each object's memory: (B, C, E, E)."""
        model = self.model
        cfg = model.config
        mem_pos_grid = None
        frame_mems, frame_pos, ptrs, ptr_pos = [], [], [], []
        for obj in objs:
            records = [(cfg.num_maskmem - 1, r) for r in obj.cond.values()]
            for t_pos in range(1, cfg.num_maskmem):
                t_rel = cfg.num_maskmem - t_pos  # frames back along the direction of travel
                prev = obj.history.get(frame + t_rel if reverse else frame - t_rel)
                if prev is not None:
                    records.append((cfg.num_maskmem - t_pos - 1, prev))
            mems, poss = [], []
            for slot, r in records:
                tokens = r.memory.flatten(2).transpose(1, 2)[0].float()  # (EE, mem_dim)
                if mem_pos_grid is None:
                    mem_pos_grid = _memory_pos(tokens.shape[0], cfg.mem_dim, tokens.device)
                mems.append(tokens)
                poss.append(mem_pos_grid + model.maskmem_tpos_enc[slot].reshape(1, -1))
            frame_mems.append(torch.cat(mems))
            frame_pos.append(torch.cat(poss))

            sign = -1 if reverse else 1
            offsets, pointers = [], []
            for t, r in obj.cond.items():
                if (t >= frame) if reverse else (t <= frame):
                    offsets.append((frame - t) * sign)
                    pointers.append(r.pointer)
            for t_diff in range(1, self._max_ptrs):
                t = frame + t_diff if reverse else frame - t_diff
                if not 0 <= t < self.num_frames:
                    break
                r = obj.history.get(t)
                if r is not None:
                    offsets.append(t_diff)
                    pointers.append(r.pointer)
            if pointers:
                split = cfg.hidden_dim // cfg.mem_dim
                p = torch.cat(pointers).reshape(-1, cfg.mem_dim)  # (n * split, mem_dim)
                pos = model.object_pointer_pos(
                    torch.tensor(offsets, device=p.device), max(self._max_ptrs - 1, 1)
                ).repeat_interleave(split, dim=0)
                ptrs.append(p)
                ptr_pos.append(pos)
            else:
                ptrs.append(frame_mems[-1].new_zeros(0, cfg.mem_dim))
                ptr_pos.append(frame_mems[-1].new_zeros(0, cfg.mem_dim))

        memory, memory_pos, mask, n_ptr = _pad_batch(frame_mems, frame_pos, ptrs, ptr_pos)
        b = len(objs)
        return model.condition_on_memory(
            emb.features.expand(b, -1, -1, -1), emb.pos, memory, memory_pos, n_ptr, mask
        )

    def result(self, frame: int) -> FrameResult:
        """The current result of every object on ``frame`` (-1024 where none)."""
        self._check_open()
        h, w = self.frame_shape
        objs = list(self._objects.values())
        lows = []
        for obj in objs:
            r = obj.output(frame)
            if r is None:
                size = self.model.config.low_res_mask_size
                lows.append(torch.full((1, 1, size, size), NO_OBJECT_LOGIT))
            else:
                lows.append(r.low_res.float().cpu())
        if not lows:
            return FrameResult(frame, (), np.zeros((0, h, w), np.float32))
        full = F.interpolate(torch.cat(lows), size=(h, w), mode="bilinear", align_corners=False)
        return FrameResult(frame, tuple(o.obj_id for o in objs), full[:, 0].numpy())


def plan_passes(
    direction: str,
    start: int | None,
    stop: int | None,
    num_frames: int,
    default_start: Callable[[bool], int],
) -> list[tuple[int, int, bool]]:
    """The (first, last, reverse) passes of a propagation over ``num_frames`` frames (see
    :meth:`VideoTracker.propagate`); ``default_start(reverse)`` is where a pass starts when
    ``start`` is None. ``start``/``stop`` must be valid frame indices. Raises ValueError for a
    direction that cannot go from start to stop."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if direction == "both":
        lo = 0 if start is None else start
        hi = num_frames - 1 if stop is None else stop
        if lo > hi:
            raise ValueError(f"start {lo} is after stop {hi}")
        fwd = max(lo, min(default_start(False), hi))
        bwd = min(hi, max(default_start(True), lo))
        return [(fwd, hi, False), (bwd, lo, True)]
    reverse = direction == "backward"
    first = default_start(reverse) if start is None else start
    last = (0 if reverse else num_frames - 1) if stop is None else stop
    if (first < last) if reverse else (first > last):
        raise ValueError(f"{direction} propagation cannot go from frame {first} to {last}")
    return [(first, last, reverse)]


def frames_in(passes: list[tuple[int, int, bool]]) -> int:
    """How many results the passes of :meth:`VideoTracker.plan` yield."""
    return sum(abs(last - first) + 1 for first, last, _ in passes)


def _memory_pos(n: int, dim: int, device) -> torch.Tensor:
    """(n, dim) sine encoding of the square memory grid (the memory encoder's own PE)."""
    side = int(round(n**0.5))
    return sine_position_encoding(side, side, dim, device).flatten(1).transpose(0, 1)


def _pad_batch(frame_mems, frame_pos, ptrs, ptr_pos):
    """Stack per-object memories into (B, M, D) with frame tokens first and pointer tokens
    last, padding shorter ones; the mask marks real tokens (None when nothing is padded)."""
    n_frames = max(m.shape[0] for m in frame_mems)
    n_ptr = max(p.shape[0] for p in ptrs)
    if all(m.shape[0] == n_frames for m in frame_mems) and all(p.shape[0] == n_ptr for p in ptrs):
        memory = torch.stack([torch.cat(x) for x in zip(frame_mems, ptrs)])
        pos = torch.stack([torch.cat(x) for x in zip(frame_pos, ptr_pos)])
        return memory, pos, None, n_ptr
    b, d = len(frame_mems), frame_mems[0].shape[1]
    device = frame_mems[0].device
    memory = torch.zeros(b, n_frames + n_ptr, d, device=device)
    pos = torch.zeros_like(memory)
    mask = torch.zeros(b, 1, 1, n_frames + n_ptr, dtype=torch.bool, device=device)
    for i, (m, mp, p, pp) in enumerate(zip(frame_mems, frame_pos, ptrs, ptr_pos)):
        memory[i, : len(m)], pos[i, : len(m)], mask[i, ..., : len(m)] = m, mp, True
        end = n_frames + len(p)
        memory[i, n_frames:end], pos[i, n_frames:end], mask[i, ..., n_frames:end] = p, pp, True
    return memory, pos, mask, n_ptr


MAX_OBJ_ID = int(np.iinfo(np.uint64).max)  # the largest value any label dtype holds


def _check_obj_id(obj_id) -> int:
    if isinstance(obj_id, bool) or not isinstance(obj_id, (int, np.integer)) or obj_id < 1:
        raise PromptError(
            f"object ids are positive integers (they become label values), got {obj_id!r}"
        )
    if obj_id > MAX_OBJ_ID:
        raise PromptError(
            f"object id {obj_id} is too large for any label array (the largest is "
            f"{MAX_OBJ_ID:,}, uint64); use smaller ids"
        )
    return int(obj_id)


__all__ = ["FrameResult", "FrameSourceError", "VideoTracker", "frames_in", "plan_passes"]
