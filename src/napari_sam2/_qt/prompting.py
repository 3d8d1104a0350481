"""The widget's prompts: clicks and boxes from napari layers kept in step with the tracker
(bad ones refused at once), objects chosen, listed, renamed and deleted, results written into
SAM2 labels. A part of :class:`~napari_sam2._qt.widget.SAM2Widget`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engine.labels import result_labels
from ..io import ObjectPrompt
from . import layers as L
from .history import PromptState, Step, box_patch
from .object_list import ObjectInfo
from .undo import UndoMixin

META = "napari_sam2"  # layer metadata key: which image a SAM2 layer belongs to, and its role


class PromptingMixin(UndoMixin):
    def _update_defaults(self, *_) -> None:
        if self.points is not None:
            self._set_point_defaults(shift=False)
        if self.boxes is not None:
            self.boxes.feature_defaults = {L.OBJ_ID: int(self.obj_id.value)}
        if self.labels_layer is not None:
            self.labels_layer.selected_label = int(self.obj_id.value)
        self.object_list.select(int(self.obj_id.value))

    def _set_point_defaults(self, shift: bool) -> None:
        """The next click's object id and polarity: negative when exactly one of Shift and the
        *negative clicks* box is on."""
        self.points.feature_defaults = {
            L.OBJ_ID: int(self.obj_id.value),
            L.POSITIVE: shift == self.negative.value,
        }

    def _polarity_from_modifiers(self, layer, event) -> None:
        """A Shift-click adds a negative point (the *negative clicks* box flips the meaning)."""
        self._set_point_defaults("Shift" in {getattr(k, "name", str(k)) for k in event.modifiers})

    def next_object(self, *_) -> None:
        """Start a new object: the next unused id, clicked in *SAM2 clicks* (not drawn as a
        box by mistake)."""
        self.obj_id.value = max([int(self.obj_id.value), *self.used_ids()]) + 1
        if self.points is not None and self.points in self.viewer.layers:
            self.viewer.layers.selection.active = self.points
            self.points.mode = "add"

    def select_next_object(self, step: int = 1) -> None:
        ids = sorted(set(self.used_ids()))
        if ids:
            current = int(self.obj_id.value)
            later = [i for i in ids if (i > current if step > 0 else i < current)]
            self.obj_id.value = (
                (min(later) if step > 0 else max(later))
                if later
                else (ids[0] if step > 0 else ids[-1])
            )

    def select_previous_object(self) -> None:
        self.select_next_object(-1)

    def toggle_negative(self) -> None:
        self.negative.value = not self.negative.value

    def used_ids(self) -> list[int]:
        """Object ids in use: in the prompt layers, in the tracker and in SAM2 labels."""
        used = []
        for layer in (self.points, self.boxes):
            if layer is not None and len(layer.data):
                used.extend(int(v) for v in layer.features[L.OBJ_ID])
        if self.session is not None:
            used.extend(self.session.obj_ids)
        used.extend(i for present in self._labelled.values() for i in present)
        return used

    def undo_last_click(self, *_) -> None:
        """Remove the most recently added click (an undoable step); its slice is segmented
        again, and slices propagated from it are marked as stale."""
        if self.points is None or not len(self.points.data):
            return
        rows = L.point_rows(self.points, self.image_layer, self.geometry)
        last = self.points.data[-1]
        where = self.geometry.frame_of(
            self.image_layer.world_to_data(self.points.data_to_world(last))
        )
        if where is not None and self.session is not None and rows:
            tracked = self.session.tracker.memory_stats()["tracked_in_ram"] > 0
            self._stale_after = where[0] if tracked else None
        self.points.selected_data = {len(self.points.data) - 1}
        self.points.remove_selected()

    def _on_prompts_changed(self, event=None) -> None:
        action = getattr(event, "action", None)
        if action is not None and str(getattr(action, "value", action)) in (
            "adding",
            "removing",
            "changing",
        ):
            return  # wait for the finished action
        if self.session is None or self._replaying:
            return
        bad = L.outside_points(self.points, self.image_layer, self.geometry)
        if bad:  # removed at once: a click outside the image must not poison the slice
            self.points.selected_data = set(bad)
            self.points.remove_selected()  # (comes back here with the remaining points)
            self.feedback.error(
                "That click lies outside the image (or off the slices being tracked); it was "
                "removed. Click on the object itself."
            )
            return
        tiny = L.tiny_boxes(self.boxes, self.image_layer, self.geometry)
        if tiny:  # a click on the box layer, not a drag: it was meant as a click
            self._boxes_to_clicks(tiny)
            return
        L.color_points(self.points)
        state, before = PromptState.capture(self.points, self.boxes), self._prompt_state
        step = None
        if before is not None and not state.same(before):
            step = self.history.push(Step(_what_changed(before, state), (before, state)))
        self._prompt_state = state
        self._sync_prompts(step)

    def _sync_prompts(self, step: Step | None, write: bool = True) -> None:
        """Bring the tracker in step with the tables; its results go into SAM2 labels (and
        into ``step``) unless ``write`` is off (an undo puts the pixels back itself)."""
        points = L.point_rows(self.points, self.image_layer, self.geometry)
        boxes = L.box_rows(self.boxes, self.image_layer, self.geometry)
        session = self.session
        self._sync_errors, self._sync_changed = [], False
        self._sync_window = None
        propagations = self._propagations

        dtype = self.labels_layer.data.dtype

        def sync():
            # in the worker: the session's frames need its lock, which an embedding or a
            # propagated slice may hold for seconds (never wait for it on the event loop)
            prompted = {r.frame for r in points} | {r.frame for r in boxes}
            for frame in sorted(prompted | session.synced_frames()):
                outcome = session.sync_frame(frame, points, boxes)
                if outcome.result is not None or outcome.removed or outcome.errors:
                    yield outcome, Resolved.of(session, outcome.result, dtype)

        self.feedback.say("Segmenting…")
        self.run_step(
            sync,
            yielded=lambda done: self._show_sync(*done, step, write),
            finished=lambda: self._synced(propagations),
        )

    def _boxes_to_clicks(self, tiny) -> None:
        indices = [i for i, _ in tiny]
        self.boxes.selected_data = set(indices)
        self.boxes.remove_selected()
        for _, (frame, obj_id, row, col) in tiny:
            self.obj_id.value = obj_id
            self.viewer.layers.selection.active = self.points
            self.points.mode = "add"
            coords = list(self.geometry.index(frame)) + [row, col]
            world = self.image_layer.data_to_world(coords)
            self.points.add([self.points.world_to_data(world)])
        self.feedback.say("A box of a few pixels was taken as a click.")

    def _show_sync(
        self, outcome, resolved: Resolved | None, step: Step | None = None, write: bool = True
    ) -> None:
        if outcome.removed and write:
            self._forget_untracked(outcome.removed, outcome.frame, step)
        for obj_id, message in outcome.errors:
            self._sync_errors.append(f"object {obj_id} on slice {outcome.frame}: {message}")
        if outcome.result is not None or outcome.removed:
            self._sync_changed = True
        if outcome.result is not None and write:
            self.write_result(outcome.result, step=step, resolved=resolved)
        if outcome.windows:  # tiles: the window that answered (the current object's, else last)
            windows = dict(outcome.windows)
            window = windows.get(int(self.obj_id.value), outcome.windows[-1][1])
            self.outline.update(outcome.frame, window)
            self._sync_window = window

    def _synced(self, propagations: int) -> None:
        """A sync finished: its errors, or what it changed (an undone click leaves stale
        slices), or just readiness — without hiding what a propagation that finished meanwhile
        said."""
        self.refresh_objects()
        if self._sync_errors:
            self.feedback.error("; ".join(self._sync_errors))
        elif self._kept_note is not None:
            note, self._kept_note = self._kept_note, None
            self.feedback.done(note, notify=True)
        elif self._stale_after is not None:
            k, self._stale_after = self._stale_after, None
            self.feedback.done(
                f"Click undone: slice {k} segmented again. The slices propagated from it still "
                "show the undone click's effect: press Propagate to update them."
            )
        elif self._ready_note is not None:
            if len(self.runner.workers) > 1:  # more syncs to come: the last one says it
                return
            note, self._ready_note = self._ready_note, None
            self.feedback.done(note)
        elif self._propagations != propagations or self.propagating:
            return
        elif self._sync_changed:
            where = ""
            if self._sync_window is not None:
                r0, c0, r1, c1 = self._sync_window
                where = f" · tiles: answered at full resolution in rows {r0}–{r1}, cols {c0}–{c1}"
            self.feedback.done(f"Ready · object {self.obj_id.value}{where}.")
        else:
            self.feedback.say(f"Ready · object {self.obj_id.value}.")

    def show_sync(self, outcome, step: Step | None = None, write: bool = True) -> None:
        """Show the result of a prompt change (masks of new objects stay as in the layer)."""
        if outcome.result is not None and write:
            self.write_result(outcome.result, step=step)
        self.refresh_objects()

    def write_result(
        self,
        result,
        undoable: bool = True,
        step: Step | None = None,
        resolved: Resolved | None = None,
    ) -> None:
        """Write a frame's result into SAM2 labels, leaving alone the objects whose prompt on
        that frame is a mask (their labels there are the user's or the generator's). What
        changed goes into the undo history: into ``step``, or (``undoable`` off: a propagated
        slice) into the step of the propagation running. ``resolved``: the result's labels,
        worked out in the worker that made it (so that only the merge is done here)."""
        masked = self.session.mask_prompted(result.frame) if self.session is not None else ()
        own = None
        if resolved is not None and resolved.masked == frozenset(masked):
            result, own = resolved.result, resolved.labels
            if own.dtype != self.labels_layer.data.dtype:
                own = None
        elif masked:
            result = result.without(masked)
        if masked:
            meta = self.labels_layer.metadata.setdefault(META, {})
            meta.setdefault("mask_prompts", {})[str(result.frame)] = sorted(masked)
        # only the box that changes is written, copied for undo and shown again
        new, box, before = L.write_changes(self.labels_layer, self.geometry, result, own)
        if not undoable:
            step = step or self._propagation_history_step()
        self._labelled[result.frame] = L.label_ids(new)
        if box is None:
            return
        if undoable:
            self.labels_layer.refresh()
        self.record(step, box_patch(self.geometry, result.frame, box, before, new[box]))

    def refresh_objects(self) -> None:
        if self.session is None:
            self.object_list.show_objects([])
            return
        ids = sorted(set(self.used_ids()) | {i for f in self._labelled.values() for i in f})
        infos = []
        for obj_id in ids:  # the session's view: never waits for a propagated slice
            prompted = list(self.session.prompted_frames(obj_id))
            labelled = sum(1 for present in self._labelled.values() if obj_id in present)
            infos.append(ObjectInfo(obj_id, self.names.get(obj_id, ""), prompted, labelled))
            infos[-1].lineage = self.lineage.note(obj_id)  # parents, daughters (lineage_tab)
        self.object_list.show_objects(infos, self.labels_layer)

    def _select_object(self, obj_id: int) -> None:
        if int(self.obj_id.value) != obj_id:
            self.obj_id.value = obj_id

    def _rename(self, obj_id: int, name: str) -> None:
        self.names[obj_id] = name

    def prompt_rows(self) -> list[ObjectPrompt]:
        """Every click and box, grouped per object and slice (the CSV of a saved session)."""
        groups: dict[tuple[int, int], ObjectPrompt] = {}
        for p in L.point_rows(self.points, self.image_layer, self.geometry):
            g = groups.setdefault((p.frame, p.obj_id), ObjectPrompt(p.frame, p.obj_id))
            g.points.append((p.row, p.col))
            g.labels.append(int(p.positive))
        for b in L.box_rows(self.boxes, self.image_layer, self.geometry):
            groups.setdefault((b.frame, b.obj_id), ObjectPrompt(b.frame, b.obj_id)).box = b.box
        return list(groups.values())


@dataclass(frozen=True)
class Resolved:
    """A frame's result as a worker prepared it for writing: without the objects whose prompt
    there is a mask (``masked``, as the session said then), and its own labels resolved (the
    highest logit wins) — work on the whole slice that stays off the event loop."""

    result: object  # FrameResult
    masked: frozenset
    labels: np.ndarray

    @classmethod
    def of(cls, session, result, dtype) -> Resolved | None:
        if result is None:
            return None
        masked = frozenset(session.mask_prompted(result.frame))
        kept = result.without(masked) if masked else result
        return cls(kept, masked, result_labels(kept, dtype))


def _what_changed(before: PromptState, after: PromptState) -> str:
    """The name of a change of the tables, for the status line."""
    clicks = len(after.points) - len(before.points)
    boxes = len(after.boxes) - len(before.boxes)
    if clicks > 0:
        return "click" if clicks == 1 else f"{clicks} clicks"
    if clicks < 0:
        return "removing a click" if clicks == -1 else f"removing {-clicks} clicks"
    if boxes > 0:
        return "box"
    if boxes < 0:
        return "removing a box"
    return "moving a prompt"
