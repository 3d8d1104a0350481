"""The widget's undo and redo (the records are :mod:`.history`): every click, box, painting,
deleted object and propagation is a step; undoing one writes its label crops back, puts the
clicks and boxes tables as they were and prompts the tracker from them again. A part of
:class:`~napari_sam2._qt.widget.SAM2Widget`."""

from __future__ import annotations

import numpy as np

from ..engine.reruns import PropagationLedger
from .history import UNDO_KEYS, History, PromptState, Step, erase_objects, frames_of


class UndoMixin:
    def _init_history(self) -> None:
        self.history = History()
        self._prompt_state: PromptState | None = None  # the tables as the history last saw them
        self._replaying = False  # tables being restored: not a change of the user's
        self._propagation_step: tuple = (None, None)  # (worker, its step)
        self._recording = 0  # background work whose results still go into a step
        self._kept_note: str | None = None
        self.ledger = PropagationLedger()  # what Propagate would repeat (propagation.py)

    def _start_history(self) -> None:
        """A session began: an empty history, from the tables as they are now; Ctrl+Z on SAM2
        labels goes through it instead of napari's own pixel undo."""
        self.history.clear()
        self.ledger.clear()
        self._prompt_state = PromptState.capture(self.points, self.boxes)
        for key, action in zip(UNDO_KEYS, (self.undo_step, self.redo_step)):
            self.labels_layer.bind_key(key, lambda _layer, action=action: action(), overwrite=True)

    def _stop_history(self) -> None:
        self.history.clear()
        self._prompt_state = None
        if self.labels_layer is not None:
            for key in UNDO_KEYS:
                try:
                    self.labels_layer.bind_key(key, None)
                except (KeyError, ValueError):
                    pass

    # ------------------------------------------------------------------ recording
    def record(self, step: Step | None, patch) -> None:
        note = self.history.record(step, patch)
        if note:
            self.feedback.done(note, notify=True)

    def _propagation_history_step(self) -> Step:
        """The step of the propagation running (one per Propagate)."""
        worker = getattr(self, "propagation_worker", None)
        known, step = self._propagation_step
        if step is None or known is not worker:
            step = self.history.push(Step("propagation"))
            self._propagation_step = (worker, step)
        return step

    def run_step(self, fn, *args, returned=None, yielded=None, finished=None):
        """Run background work whose results belong to a step: undo waits for it."""
        self._recording += 1

        def done():
            self._recording -= 1
            if finished is not None:
                finished()

        return self.run(fn, *args, returned=returned, yielded=yielded, finished=done)

    def _recount(self, frames) -> None:
        """The object ids on these slices again, for the object list."""
        view = self.label_view()
        for t in frames:
            ids = set(np.unique(np.asarray(view[t])).tolist()) - {0}
            if ids:
                self._labelled[t] = ids
            else:
                self._labelled.pop(t, None)

    def _forget_untracked(self, removed, frame: int, step: Step | None) -> None:
        """Objects left with no prompt at all. One never propagated loses its labels (they
        were its click's mask); a propagated one keeps them, as painted labels that are no
        longer tracked, so that one key never erases a propagation."""
        spread = {i: {f for f, ids in self._labelled.items() if i in ids} for i in removed}
        kept = sorted(i for i in removed if spread[i] - {frame})
        gone = [i for i in removed if i not in kept]
        if gone:
            frames = {frame}.union(*(spread[i] for i in gone))
            for patch in erase_objects(self.geometry, self.labels_layer.data, gone, frames):
                self.record(step, patch)
            self.labels_layer.refresh()
            self._recount(frames)
        if kept:
            slices = len(set().union(*(spread[i] for i in kept)))
            which = f"Object {kept[0]}" if len(kept) == 1 else f"Objects {kept}"
            self._kept_note = (
                f"{which} lost its last prompt: its labels on {slices} slices were kept, as "
                "painted labels that are not tracked any more. Ctrl+Z brings the prompt back; "
                "'Delete object' in the list removes the labels."
            )

    # ------------------------------------------------------------------ undo, redo
    def undo_step(self, *_) -> None:
        """Undo the latest click, box, painting, deletion or propagation (Ctrl+Z)."""
        self._travel(undo=True)

    def redo_step(self, *_) -> None:
        """Redo what was undone last (Ctrl+Shift+Z)."""
        self._travel(undo=False)

    def _travel(self, undo: bool) -> None:
        if self.session is None:
            return
        verb = "undo" if undo else "redo"
        if self.propagating:
            self.feedback.say(f"Cancel the propagation first, then {verb}.")
            return
        if self._recording:
            self.feedback.say(f"Wait for the segmentation in progress, then {verb}.")
            return
        step = self.history.pop_undo() if undo else self.history.pop_redo()
        if step is None:
            self.feedback.say(f"Nothing to {verb}.")
            return
        self._replay(step, undo)
        again = "Ctrl+Shift+Z redoes it" if undo else "Ctrl+Z undoes it"
        message = f"{'Undone' if undo else 'Redone'}: {step.what} ({again})."
        if step.prompts is not None:
            self._ready_note = message  # said once the tracker follows the tables again
        self.feedback.done(message)

    def _replay(self, step: Step, undo: bool) -> None:
        data = self.labels_layer.data
        frames: set[int] = set()
        for patch in reversed(step.patches) if undo else step.patches:
            data[patch.region] = patch.before if undo else patch.after
            frames.update(frames_of(patch.region, self.geometry))
        if frames:
            self.labels_layer.refresh()
            self._recount(frames)
        self.ledger.clear()  # the labels are no longer what the last propagation wrote
        # Tracker work beyond the tables first (an id changed back), then the tables synced.
        extra = step.undo_extra if undo else step.redo_extra
        if extra is not None:
            extra()
        if step.prompts is not None:
            state = step.prompts[0 if undo else 1]
            self._replaying = True
            try:
                state.restore(self.points, self.boxes)
            finally:
                self._replaying = False
            self._prompt_state = state
            self._sync_prompts(None, write=False)  # the pixels are back already
        self.refresh_objects()

    # ------------------------------------------------------------------ deleting
    def delete_object(self, obj_id: int) -> None:
        """Remove an object: its clicks, boxes, labels and everything the tracker keeps
        (undoable)."""
        self.delete_objects([obj_id])

    def delete_objects(self, obj_ids) -> None:
        """Remove these objects (one undoable step)."""
        if self.session is None:
            return
        obj_ids = sorted({int(i) for i in obj_ids})
        if not obj_ids:
            return
        before = PromptState.capture(self.points, self.boxes)
        self._replaying = True  # the tracker forgets them below, not through a sync
        try:
            for layer in (self.points, self.boxes):
                ids = layer.features["obj_id"].to_numpy() if len(layer.data) else np.zeros(0)
                mine = set(np.flatnonzero(np.isin(ids, obj_ids)).tolist())
                if mine:
                    layer.selected_data = mine
                    layer.remove_selected()
        finally:
            self._replaying = False
        self._prompt_state = after = PromptState.capture(self.points, self.boxes)
        session = self.session
        masks, names = {}, {}
        for obj_id in obj_ids:
            masks[obj_id] = []
            if obj_id in session.obj_ids:
                prompted = session.tracker.prompted_frames(obj_id)
                masks[obj_id] = [f for f in prompted if obj_id in session.mask_prompted(f)]
                session.remove_object(obj_id)
            names[obj_id] = self.names.pop(obj_id, None)
        which = f"object {obj_ids[0]}" if len(obj_ids) == 1 else f"objects {obj_ids}"
        step = self.history.push(Step(f"deleting {which}", (before, after)))
        chosen = set(obj_ids)
        labelled = {f for f, ids in self._labelled.items() if chosen & set(ids)}  # not every slice
        patches = erase_objects(self.geometry, self.labels_layer.data, obj_ids, labelled)
        for patch in patches:
            self.record(step, patch)
        if patches:
            self.labels_layer.refresh()
        for present in self._labelled.values():
            present.difference_update(obj_ids)
        self._labelled = {f: ids for f, ids in self._labelled.items() if ids}
        self.ledger.started(obj_ids)

        def undelete():
            for obj_id in obj_ids:
                self._undelete(obj_id, masks[obj_id], names[obj_id])

        def forget():
            for obj_id in obj_ids:
                self._forget_object(obj_id)

        step.undo_extra, step.redo_extra = undelete, forget
        current = int(self.obj_id.value)
        if current in obj_ids:  # the current object is gone: the next one
            ids = sorted(set(self.used_ids()) - set(obj_ids))
            later = [i for i in ids if i > current]
            self.obj_id.value = later[0] if later else (ids[-1] if ids else 1)
        self.refresh_objects()
        what = which[0].upper() + which[1:]
        self.feedback.done(
            f"{what} deleted (Ctrl+Z brings {'it' if len(obj_ids) == 1 else 'them'} back)."
        )

    def _undelete(self, obj_id: int, masks: list[int], name: str | None) -> None:
        if name:
            self.names[obj_id] = name
        view = self.label_view()
        for frame in masks:  # its mask prompts, from the labels put back
            labels = np.array(view[frame], copy=True)
            self.run_step(self.session.add_label_prompts, frame, labels, [obj_id])

    def _forget_object(self, obj_id: int) -> None:
        if obj_id in self.session.obj_ids:
            self.session.remove_object(obj_id)
        self.names.pop(obj_id, None)
