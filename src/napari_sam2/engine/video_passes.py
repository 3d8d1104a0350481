"""One propagation of a :class:`~.video.VideoTracker`: its passes over the frames, and on each
frame every object's memory attention, mask decoding and memory encoding, in batches of
``object_batch`` objects. An object whose record on a frame was computed from the very records
it would attend to now (a re-propagation after a correction of another object; objects are
tracked independently) keeps that record: the same result, without computing it again.

:class:`TrackingPasses` is the propagating half of the tracker, kept apart from its prompts and
frames (``video.py``); it works on the tracker's tables: ``_objects`` (each object's
:class:`~.memory_bank.ObjectMemory`), ``_new_prompt_frames``, ``_resume`` (where an interrupted
pass goes on, per direction), ``_unfinished``, ``_embeddings``, ``_prefetch``, ``_max_ptrs``,
``object_batch``, ``model`` and ``num_frames``, and its ``_embedding(frame)``, ``result(frame)``
and ``_check_open()``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .conditioning import MemoryPlan, batches, commit_pending, condition, memory_plan
from .memory_bank import FrameRecord, ObjectMemory
from .results import FrameResult


class TrackingPasses:
    """The propagation of a video tracker (see the module); mixed into
    :class:`~.video.VideoTracker`, which defines the tables it uses."""

    def _propagate(self, call, passes, chosen=None):
        for i, (first, last, reverse) in enumerate(passes):
            yield from self._pass(first, last, reverse, call, passes[i + 1 :], chosen)
        self._unfinished = None
        # Prompts given while it ran are still to be followed by the next propagation.
        self._new_prompt_frames = {f for o in self._objects.values() for f in o.pending}

    def _default_start(self, reverse: bool, chosen=None) -> int:
        candidates = set(self._new_prompt_frames)
        if chosen is not None:  # their own new prompts, else all their prompts
            objs = [self._objects[i] for i in chosen]
            theirs = {f for o in objs for f in (*o.prompts, *o.pending)}
            candidates = (candidates & theirs) or {f for o in objs for f in (*o.cond, *o.pending)}
        elif self._resume[reverse] is not None:
            candidates.add(self._resume[reverse])
        if not candidates:
            candidates = {f for o in self._objects.values() for f in o.cond}
        return max(candidates) if reverse else min(candidates)

    @torch.inference_mode()
    def _pass(self, first, last, reverse, call, later, chosen) -> Iterator[FrameResult]:
        self._check_open()
        objects = self._objects.values() if chosen is None else [self._objects[i] for i in chosen]
        commit_pending(self.model, objects, self._embedding, self.object_batch)
        step = -1 if reverse else 1
        order = range(first, last + step, step)
        self._resume[reverse] = first
        for i, frame in enumerate(order):
            if i + 1 < len(order) and not self._embeddings.known(order[i + 1]):
                self._prefetch.request(order[i + 1])
            self._track_frame(frame, reverse, objects)
            if not any(frame in o.pending for o in self._objects.values()):
                self._new_prompt_frames.discard(frame)
            more = i + 1 < len(order)
            self._resume[reverse] = frame + step if more else None
            rest = [(frame + step, last, reverse)] if more else []
            self._unfinished = (call, rest + list(later)) if rest or later else None
            yield self.result(frame)
        self._resume[reverse] = None

    def _track_frame(self, frame: int, reverse: bool, objects) -> None:
        todo = [o for o in objects if frame not in o.cond]
        # An object prompted while this propagation runs has nothing encoded to follow yet:
        # the next propagation commits its prompt and tracks it.
        plans = [self._memory_plan(o, frame, reverse) for o in todo]
        plans = [p for p in plans if p.size != (0, 0)]
        # An object whose record here was computed from the same memories (an object not
        # corrected, passed again by a re-propagation) keeps it: objects are independent.
        # The frame's pixels are part of it (read only where a record could be kept): a frame
        # edited since is computed again.
        state = self.model.state_token()
        fresh, pixels = plans, None
        if any(frame in p.obj.history for p in plans):
            pixels = self._embeddings.fingerprint(frame)
            now = (state, pixels)
            fresh = [p for p in plans if not _computed_from(p.obj, frame, p.inputs(now))]
        if fresh:
            emb = self._embedding(frame, pixels)  # the frame read once for both checks
            made = (state, self._embeddings.pixels(frame))
            # Once per frame, for every object: the memory attention's and memory encoder's
            # object-independent first steps.
            tokens = self.model.memory_frame_tokens(emb.features, emb.pos)
            projected = self.model.memory_frame_projection(emb.features)
            for batch in batches(fresh, self.object_batch):
                features = condition(
                    self.model, batch, emb.features, emb.pos, self._max_ptrs, tokens
                )
                b = len(batch)
                high_res = tuple(h.expand(b, -1, -1, -1) for h in emb.high_res)
                _, _, best, pointer, score = self.model.decode_tracked(
                    features, high_res, None, None, None, multimask=True
                )
                memory, _ = self.model.encode_memory(
                    emb.features, self.model.upscale_masks(best), score, False, projected
                )
                records = FrameRecord(best, pointer, score, memory.to(torch.bfloat16))
                for i, plan in enumerate(batch):
                    plan.obj.history.put(frame, records.select(i, plan.inputs(made)))
        followed = {id(p.obj) for p in plans}
        for obj in objects:
            if frame in obj.cond or id(obj) in followed:
                obj.tracked[frame] = reverse

    def _memory_plan(self, obj: ObjectMemory, frame: int, reverse: bool) -> MemoryPlan:
        return memory_plan(
            obj,
            frame,
            reverse,
            num_maskmem=self.model.config.num_maskmem,
            max_ptrs=self._max_ptrs,
            num_frames=self.num_frames,
        )


def _computed_from(obj: ObjectMemory, frame: int, inputs: tuple) -> bool:
    record = obj.history.get(frame)
    return record is not None and record.inputs == inputs
