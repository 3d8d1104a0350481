"""Editing objects from the object list: merge several into one, give one a new id, delete
several, each one step of the undo history (``undo.py``). A part of
:class:`~napari_sam2._qt.widget.SAM2Widget`.

A merge hands the later objects' labels and clicks to the first; on every slice where they were
prompted, the first object is then prompted by its merged mask there (refined by its clicks),
so that what is shown is what the next propagation follows. A new id keeps the object's
tracking memory and results (nothing is recomputed)."""

from __future__ import annotations

import numpy as np

from . import layers as L
from .history import PromptState, Step, relabel_objects
from .undo import UndoMixin


class ObjectEditMixin(UndoMixin):
    def _edit_refused(self, what: str) -> bool:
        if self.session is None:
            self.feedback.error("Press Start first.")
            return True
        if self.propagating or self.task is not None:
            self.feedback.error(
                f"Busy {self.task}: wait for it to finish (or Cancel), then {what}."
            )
            return True
        return False

    def _relabel_tables(self, mapping: dict[int, int]) -> None:
        """The clicks and boxes of these objects get their new ids (no sync: the caller
        brings the tracker in step)."""
        for layer in (self.points, self.boxes):
            if len(layer.data):
                features = layer.features.copy()
                features[L.OBJ_ID] = features[L.OBJ_ID].replace(mapping)
                layer.features = features
        L.color_points(self.points)

    def _relabel_pixels(self, step: Step, mapping: dict[int, int]) -> None:
        patches = relabel_objects(self.geometry, self.labels_layer.data, mapping)
        for patch in patches:
            self.record(step, patch)
        if patches:
            self.labels_layer.refresh()
        for present in self._labelled.values():
            for a, b in mapping.items():
                if a in present:
                    present.discard(a)
                    present.add(b)

    # ------------------------------------------------------------------ merge
    def merge_objects(self, ids) -> None:
        """The later objects of ``ids`` become the first: their labels, clicks and boxes, and
        their prompted slices (undoable, one step)."""
        ids = [int(i) for i in ids]
        if len(set(ids)) < 2:
            self.feedback.error("Select two or more objects in the list to merge (Ctrl-click).")
            return
        if self._edit_refused("merge"):
            return
        keep, gone = ids[0], [i for i in dict.fromkeys(ids[1:]) if i != ids[0]]
        session = self.session
        tracked = set(session.obj_ids)
        frames = sorted(
            {f for g in gone if g in tracked for f in session.tracker.prompted_frames(g)}
        )
        masked = {f: session.mask_prompted(f) for f in frames}
        gone_masks = {g: [f for f in frames if g in masked[f]] for g in gone}
        names = {g: self.names.pop(g, None) for g in gone}
        before = PromptState.capture(self.points, self.boxes)
        for g in gone:
            session.remove_object(g)
        self._replaying = True
        try:
            self._relabel_tables(dict.fromkeys(gone, keep))
        finally:
            self._replaying = False
        self._prompt_state = after = PromptState.capture(self.points, self.boxes)
        step = self.history.push(Step(f"merging {gone} into object {keep}", (before, after)))
        self._relabel_pixels(step, dict.fromkeys(gone, keep))
        self.ledger.started([keep, *gone])

        def prompt_merged():
            view = self.label_view()
            for f in frames:
                labels = np.array(view[f], copy=True)
                self.run_step(session.add_label_prompts, f, labels, [keep])

        def unmerge():
            view = self.label_view()
            for g in gone:
                if names[g]:
                    self.names[g] = names[g]
            for f in frames:
                labels = np.array(view[f], copy=True)
                if keep in masked[f]:
                    self.run_step(session.add_label_prompts, f, labels, [keep])
                else:
                    self.run_step(session.remove_mask_prompts, f, [keep])
            for g, mask_frames in gone_masks.items():
                for f in mask_frames:
                    labels = np.array(view[f], copy=True)
                    self.run_step(session.add_label_prompts, f, labels, [g])
            self.ledger.clear()

        def remerge():
            for g in gone:
                session.remove_object(g)
                self.names.pop(g, None)
            prompt_merged()

        step.undo_extra, step.redo_extra = unmerge, remerge
        message = (
            f"Objects {gone} merged into object {keep} (Ctrl+Z undoes it); Propagate to track "
            "the merged object."
        )
        self._ready_note = message  # said when the sync below is done, instead of "Ready"
        prompt_merged()
        self._sync_prompts(step, write=False)  # the merged clicks prompt the first object
        self.obj_id.value = keep
        self.refresh_objects()
        self.feedback.done(message)

    # ------------------------------------------------------------------ new id
    def relabel_object(self, obj_id: int, new: int) -> None:
        """Give object ``obj_id`` the id ``new``, refused when ``new`` is in use (undoable)."""
        obj_id, new = int(obj_id), int(new)
        if self._edit_refused("change the id"):
            return
        used = set(self.used_ids())
        limit = np.iinfo(self.labels_layer.data.dtype).max
        if new == obj_id:
            self.feedback.say(f"Object {obj_id} has that id already.")
            return
        if new < 1 or new > limit:
            self.feedback.error(
                f"Object ids go from 1 to {limit} in these labels; {new} is not one."
            )
            return
        if new in used:
            free = max(used) + 1
            self.feedback.error(
                f"Object id {new} is in use: choose an unused id (e.g. {free}), or merge the two."
            )
            return
        before = PromptState.capture(self.points, self.boxes)
        self._rename_everywhere(obj_id, new)
        self._replaying = True
        try:
            self._relabel_tables({obj_id: new})
        finally:
            self._replaying = False
        self._prompt_state = after = PromptState.capture(self.points, self.boxes)
        step = self.history.push(Step(f"object {obj_id} → {new}", (before, after)))
        self._relabel_pixels(step, {obj_id: new})
        step.undo_extra = lambda: self._rename_everywhere(new, obj_id)
        step.redo_extra = lambda: self._rename_everywhere(obj_id, new)
        if int(self.obj_id.value) == obj_id:
            self.obj_id.value = new
        self.refresh_objects()
        self.feedback.done(f"Object {obj_id} is now object {new} (Ctrl+Z undoes it).")

    def _rename_everywhere(self, old: int, new: int) -> None:
        """The tracker's and the widget's records of ``old`` under ``new`` (not the tables
        or pixels: the caller, or the undo history, writes those)."""
        self.session.rename_object(old, new)
        self.ledger.rename(old, new)
        if old in self.names:
            self.names[new] = self.names.pop(old)
