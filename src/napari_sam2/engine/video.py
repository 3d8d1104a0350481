"""VideoTracker: SAM 2's streaming memory over any stack — a 3-D volume or a time-lapse.

Objects prompted on a few frames are followed through the stack. All objects are computed in one
batch per frame; frames are read, preprocessed and embedded one at a time (the next one prepared
in the background); memory per object is bounded (see :mod:`.memory_bank`).

Behaviour follows Meta's ``SAM2VideoPredictor`` (sam2 1.1.0) built with
``add_all_frames_to_correct_as_cond=True`` — the setting of Meta's own web demo, under which a
correction click on a tracked frame becomes a conditioning frame and survives re-propagation.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import torch

from ..model import SAM2Model
from ..model.sam2 import NO_OBJECT_LOGIT, ImageEmbedding
from .conditioning import (
    ConditionedCache,
    default_object_batch,
    mask_as_output,
)
from .embeddings import EmbeddingStore, frame_fingerprint, store_for
from .frame_embeddings import FrameEmbeddings
from .frame_prompts import build_frame_prompt, label_records
from .frames import FrameSource, FrameSourceError, Prefetcher
from .memory_bank import FramePrompt, FrameRecord, ObjectMemory
from .plan import DIRECTIONS, frames_in, plan_passes
from .preprocess import DEFAULT_PERCENTILES, IntensityWindow
from .prompts import (
    PromptError,
    check_obj_id,
    label_ids,
)
from .results import FrameResult, LabelsResult
from .video_passes import TrackingPasses


class VideoTracker(TrackingPasses):
    """Track objects through a stack with SAM 2.

    ``frames``: (T, H, W) or (T, H, W, C) — numpy, dask, zarr, a tifffile memmap or a list of
    frames. uint8 frames are preprocessed as the official video predictor does; other dtypes are
    mapped by one intensity ``window`` for the whole stack (computed from a few frames by
    ``percentiles`` when not given). ``channel`` picks the channel of multichannel data.

    Frame embeddings are computed once (see :mod:`.embeddings`): the last ``feature_cache``
    frames stay in RAM as computed, and every frame goes to ``embeddings``: a zarr store at
    that path, kept after the tracker is closed and reused by the next tracker of the same stack
    and model (one made for anything else, or damaged, is refused; each frame read from it is
    checked against the frame's pixels and is encoded again if they changed); None (default)
    for a temporary store removed on :meth:`close` (beside ``spill_dir``); False for none.
    ``embeddings_dtype`` of a new store: "float16" (half the disk, results within a mask IoU of
    0.999) or "float32" (exact); None (default): float32 for the temporary store (float16 where
    the disk cannot hold it, said once), float16 for a store at a path.

    Objects are computed ``object_batch`` at a time (objects whose memories have the same size
    share a batch; default :func:`~.conditioning.default_object_batch`: 16 on a GPU; on the CPU
    with several threads 1 at 1024² input, 4 at 512², 16 at 256², and 1 with one thread): peak
    memory depends on the batch (at 1024² about 170 MiB plus 100 MiB per object of the batch),
    not on the number of objects, and results equal those of one big batch up to float
    rounding. Work that does not depend on the object — the image embedding, the
    first self-attention of the memory attention, the memory encoder's projection of the frame
    — is done once per frame for all objects.
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
        object_batch: int | None = None,
        embeddings=None,
        embeddings_dtype: str | None = None,
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
        self._prefetch = Prefetcher(self._prepare)  # (input, fingerprint): the frame read once
        self._embeddings = FrameEmbeddings(
            feature_cache,
            store_for(embeddings, embeddings_dtype, spill_dir, self.source, model),
            fingerprint=lambda t: frame_fingerprint(self.source.read(t)),
            spare=lambda: store_for(None, embeddings_dtype, spill_dir, self.source, model),
        )
        if object_batch is None:
            threads = torch.get_num_threads()
            object_batch = default_object_batch(model.device, cfg.embedding_size, threads)
        if isinstance(object_batch, bool) or not isinstance(object_batch, int) or object_batch < 1:
            raise ValueError(f"object_batch must be a positive integer, got {object_batch!r}")
        self.object_batch = object_batch
        self._spill_dir = spill_dir
        self._objects: dict[int, ObjectMemory] = {}
        self._conditioned = ConditionedCache()  # memory attention kept for the next click
        self._new_prompt_frames: set[int] = set()
        self._resume: dict[bool, int | None] = {False: None, True: None}
        # The passes still to run of an interrupted propagate() call, keyed by its arguments:
        # the same call continues them (and nothing else) as long as no prompt changed.
        self._unfinished: tuple[tuple, list[tuple[int, int, bool]]] | None = None
        self._closed = False
        self._lineage = None  # a Lineage once propagated with new_objects or divisions
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

    @property
    def lineage(self) -> list:
        """Tracks (id, first_frame, last_frame, parent) of lineage propagations (.lineage)."""
        return [] if self._lineage is None else self._lineage.table(keep=self._objects)

    @property
    def new_prompt_frames(self) -> list[int]:
        """Frames prompted since the last propagation reached them (where the next propagation
        starts)."""
        return sorted(self._new_prompt_frames)

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
            "cached_embeddings": len(self._embeddings),
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
        mask (H, W) bool (or 0/1, or probabilities), or cropped: a
        :class:`~napari_sam2.WindowMasks` ``(crop, (r0, c0, r1, c1), frame_shape)`` holding the
        mask inside one window, resized from its crop without a full frame (docs/big-images.md).
        Clicks add to the object's earlier clicks on the same frame and refine
        its current mask there; with ``replace`` they replace the earlier prompt and start from
        the frame's tracked mask (if any), so the result depends only on the prompt given. A box
        or a mask replaces the object's prompt on that frame (a box comes before clicks: give
        later clicks in further calls). Object ids are positive integers; they become label
        values.
        """
        self._check_open()
        frame = self.source.check_index(frame)
        obj_id = check_obj_id(obj_id)
        shape = self.frame_shape
        prompt, mask_t = build_frame_prompt(
            self.model,
            self._objects.get(obj_id),
            frame,
            obj_id,
            shape,
            points,
            labels,
            box,
            mask,
            replace,
        )
        obj = self._objects.get(obj_id)
        if obj is None:  # registered only once the prompt has given a result
            obj = ObjectMemory(obj_id, self._history_capacity, self._spill_dir)
        is_new_frame = frame not in obj.tracked
        reverse = obj.tracked.get(frame, False)
        emb = self._embedding(frame)
        if mask_t is not None:
            if not bool(mask_t.any()):
                warnings.warn(
                    f"the mask prompt of object {obj_id} on frame {frame} is too small to "
                    f"survive the resize to the model's {self.model.config.image_size}-pixel "
                    "input: the object is taken as absent there",
                    stacklevel=2,
                )
            record = mask_as_output(self.model, emb, mask_t)
        else:
            # Clicks that add to earlier ones refine the frame's current mask (as the official
            # predictor does); a replaced prompt starts again from the tracked mask, so that
            # removing a click gives what the remaining clicks alone would give.
            previous = obj.history.get(frame) if replace else obj.output(frame)
            prev_logits = None
            if previous is not None:
                prev_logits = previous.low_res.clamp(-32.0, 32.0)
            plan = None if is_new_frame else self._memory_plan(obj, frame, reverse)
            if plan is None or plan.size == (0, 0):  # nothing to remember: as a first frame
                features = self.model.without_memory(emb.features)
            else:
                features = self._conditioned.condition(self.model, plan, emb, self._max_ptrs)
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
    def add_labels(
        self, frame: int, labels, obj_ids=None, *, allow_absent: bool = False
    ) -> LabelsResult:
        """Prompt every object of a label image on ``frame``: each id > 0 of ``labels`` (H, W)
        becomes the mask prompt of the object with that id, exactly as ``add_prompt(frame, id,
        mask=labels == id)`` would, all objects computed in batches. ``obj_ids`` limits it to
        some ids (e.g. a correction of one object). With ``allow_absent``, an id of
        ``obj_ids`` that the labels do not hold is prompted as absent on this frame (an empty
        mask, as the official ``add_new_mask`` takes it: e.g. an object erased by hand).

        Returns the frame's result for the ids prompted (``.obj_ids``). Ids whose mask is too
        small to survive the resize to the model's input (a few pixels of a large frame) are
        not added: a warning names them, and they are in ``.dropped``."""
        self._check_open()
        frame = self.source.check_index(frame)
        lab, ids = label_ids(labels, self.frame_shape, obj_ids, allow_absent)
        absent = set(ids) - set(np.unique(lab).tolist())
        ids = [check_obj_id(i) for i in ids]
        emb = self._embedding(frame)
        added = []
        records, dropped = label_records(self.model, emb, lab, ids, absent, self.object_batch)
        for obj_id, record in records:
            obj = self._objects.get(obj_id) or ObjectMemory(
                obj_id, self._history_capacity, self._spill_dir
            )
            self._objects.setdefault(obj_id, obj)
            obj.prompts[frame] = FramePrompt(is_mask=True)
            obj.pending[frame] = record
            added.append(obj_id)
        if dropped:
            warnings.warn(
                f"object id(s) {dropped} on frame {frame} are too small to survive the resize "
                f"to the model's {self.model.config.image_size}-pixel input and were not added; "
                "prompt them with a click, or use a larger input size",
                stacklevel=2,
            )
        if added:
            self._new_prompt_frames.add(frame)
            self._unfinished = None
        result = self.result(frame, added)
        return LabelsResult(
            frame, result.obj_ids, low_res=result._low_res, shape=result.shape, dropped=dropped
        )

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
        self._conditioned.drop(obj_id)
        self._unfinished = None

    def reset(self) -> None:
        """Forget all objects and prompts; keep the frame source."""
        for obj in self._objects.values():
            obj.forget()
        self._objects.clear()
        self._lineage = None
        self._conditioned.drop()
        self._embeddings.clear_ram()  # a store on disk stays valid: same frames, same model
        self._new_prompt_frames.clear()
        self._resume = {False: None, True: None}
        self._unfinished = None

    def close(self) -> None:
        """Release the prefetch thread and spilled memory files. The tracker cannot be used
        afterwards (closing twice is fine)."""
        self.reset()
        self._prefetch.close()
        self._embeddings.close()
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
        self,
        direction: str = "forward",
        start: int | None = None,
        stop: int | None = None,
        *,
        obj_ids=None,
        new_objects: int | None = None,
        divisions: bool | None = None,
        lineage_options=None,
        lineage_edits=None,
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

        ``obj_ids``: follow only these objects (the others keep their results, listed as they
        are, so that overlaps are written as a run of all would write them), starting by
        default from their own new prompts. New objects every N frames, divisions, lineage
        (``lineage_edits``: the user's corrections, :mod:`.lineage_edits`): see
        :mod:`.lineage_tracking`.
        """
        lineage = new_objects is not None or divisions or self._lineage or lineage_edits
        if obj_ids is not None and lineage:
            raise ValueError("obj_ids cannot be combined with new_objects, divisions or lineage")
        if lineage:
            from .lineage_tracking import propagate_with_lineage

            return propagate_with_lineage(
                self,
                direction,
                start,
                stop,
                new_objects,
                divisions,
                lineage_options,
                edits=lineage_edits,
            )
        passes = self.plan(direction, start, stop, obj_ids=obj_ids)
        chosen = self._chosen(obj_ids)
        call = (direction, start, stop) + (() if chosen is None else (chosen,))
        return self._propagate(call, passes, chosen)

    def forget_interrupted(self) -> None:
        """Forget the rest of an interrupted propagation: the same call made again plans its
        passes afresh from its arguments (from ``start``, when given) instead of continuing
        where the interrupted one stopped."""
        self._unfinished = None

    def plan(
        self, direction: str = "forward", start=None, stop=None, *, obj_ids=None
    ) -> list[tuple[int, int, bool]]:
        """The passes :meth:`propagate` would run, as (first, last, reverse) triples;
        :func:`frames_in` counts the frames it will yield (for progress bars)."""
        self._check_open()
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        chosen = self._chosen(obj_ids)
        call = (direction, start, stop) + (() if chosen is None else (chosen,))
        start = None if start is None else self.source.check_index(start)
        stop = None if stop is None else self.source.check_index(stop)
        self._check_ready()
        if self._unfinished is not None and self._unfinished[0] == call:
            return list(self._unfinished[1])
        default = lambda reverse: self._default_start(reverse, chosen)  # noqa: E731
        return plan_passes(direction, start, stop, self.num_frames, default)

    def _chosen(self, obj_ids) -> tuple[int, ...] | None:
        """``obj_ids`` checked (known objects, in tracking order), or None for all objects."""
        if obj_ids is None:
            return None
        wanted = {check_obj_id(i) for i in obj_ids}
        if not wanted:
            raise ValueError("obj_ids is empty: give at least one object id, or None for all")
        for i in wanted:
            self._object(i)
        return tuple(i for i in self._objects if i in wanted)

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

    @torch.inference_mode()
    def precompute(self, frames=None, progress=None) -> int:
        """Embed ``frames`` (default: every frame) into the embeddings store ahead of tracking,
        the next frame read in the background; ``progress(done, total)`` after each. Returns how
        many frames were encoded (frames already in the store are skipped)."""
        self._check_open()
        order = list(range(self.num_frames)) if frames is None else list(frames)
        order = [self.source.check_index(t) for t in order]
        before = self._embeddings.computed
        for i, t in enumerate(order):
            later = [f for f in order[i + 1 :] if not self._embeddings.known(f)]
            if later:
                self._prefetch.request(later[0])
            self._embedding(t)
            if progress is not None:
                progress(i + 1, len(order))
        return self._embeddings.computed - before

    def _embedding(self, frame: int, pixels: int | None = None) -> ImageEmbedding:
        """``pixels``: the frame's fingerprint, when the caller has just taken it."""
        return self._embeddings.get(frame, self._encode, self.model.device, pixels)

    def _prepare(self, frame: int) -> tuple[torch.Tensor, int]:
        x, raw = self.source.prepare_with_frame(frame)
        return x, frame_fingerprint(raw)

    def _encode(self, frame: int) -> tuple[ImageEmbedding, int]:
        x, pixels = self._prefetch.get(frame)
        return self.model.encode_image(x.to(self.model.device)), pixels

    @property
    def embeddings(self) -> EmbeddingStore | None:
        """Where frame embeddings are kept on disk (None: in RAM only)."""
        return self._embeddings.store

    def result(self, frame: int, obj_ids=None) -> FrameResult:
        """The current result of every object (or of ``obj_ids``) on ``frame`` (-1024 where
        none)."""
        self._check_open()
        objs = list(self._objects.values())
        if obj_ids is not None:
            objs = [self._object(i) for i in obj_ids]
        size = self.model.config.low_res_mask_size
        lows = []
        for obj in objs:
            r = obj.output(frame)
            if r is None:
                lows.append(torch.full((1, 1, size, size), NO_OBJECT_LOGIT))
            else:
                lows.append(r.low_res.float().cpu())
        low_res = torch.cat(lows) if lows else torch.zeros(0, 1, size, size)
        ids = tuple(o.obj_id for o in objs)
        return FrameResult(frame, ids, low_res=low_res, shape=self.frame_shape)

    def has_embedding(self, frame: int) -> bool:
        """Whether ``frame``'s embedding is held (in RAM or in the store)."""
        return self._embeddings.known(frame)

    @torch.inference_mode()
    def embed_detached(self, frame: int, wanted=None):
        """Compute ``frame``'s embedding without touching the tracker's state (so it may run
        outside the lock a front end guards the tracker with); returns a function that hands it
        to the tracker (call it under that lock), or None when ``wanted()`` turned false once
        the frame was read."""
        frame = self.source.check_index(frame)
        x, pixels = self._prepare(frame)
        if wanted is not None and not wanted():
            return None
        emb = self.model.encode_image(x.to(self.model.device))
        return lambda: self._embeddings.get(frame, lambda _: (emb, pixels), self.model.device)


__all__ = [
    "FrameResult",
    "FrameSourceError",
    "LabelsResult",
    "VideoTracker",
    "frames_in",
    "plan_passes",
]
