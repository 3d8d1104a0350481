"""Many objects in the widget: segment everything on a slice, take a Labels layer's slice as
prompts (a Cellpose or StarDist result), and turn brush strokes in *SAM2 labels* into mask
prompts, so that painted corrections are followed by propagation instead of overwritten.
Each of these is one step of the undo history (``undo.py``).

Every object made here is prompted by its mask on the slice (``PromptSession.add_label_prompts``);
its labels on that slice stay exactly as they are in the layer (the widget does not write the
tracker's low-resolution version of them back).
"""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, FloatSpinBox, PushButton, SpinBox
from napari.layers import Labels

from ..engine.automatic import masks_to_labels, option_defaults
from ..engine.labels import label_dtype_for
from ..engine.tiles import resolve_tiles, tile_geometry
from .history import Step, frame_patch, frames_of, paint_patch

SAM2_META = "napari_sam2"  # the metadata key of the plugin's own layers (prompting.META)

if TYPE_CHECKING:
    from .widget import SAM2Widget


class Cancelled(Exception):
    """Raised inside the automatic mask generator when the user cancels."""


class ObjectTools:
    """The widget's *many objects* controls (``widgets``, laid out by the widget in its own
    column of labels); ``widget`` is the :class:`SAM2Widget` they serve."""

    def __init__(self, widget: SAM2Widget) -> None:
        self.widget = widget
        defaults = option_defaults()  # the generator's own, written once in its signature
        side = defaults["points_per_side"]
        self.points_per_side = SpinBox(
            label="clicks per side",
            min=2,
            max=64,
            value=side,
            tooltip="Segment everything clicks a grid of this many points per side "
            f"({side}: {side * side:,})",
        )
        self.iou_threshold = FloatSpinBox(
            label="min. quality",
            min=0.0,
            max=1.0,
            step=0.05,
            value=defaults["pred_iou_thresh"],
            tooltip="Keep masks whose predicted IoU is above this (SAM 2's pred_iou_thresh)",
        )
        self.stability_threshold = FloatSpinBox(
            label="min. stability",
            min=0.0,
            max=1.0,
            step=0.05,
            value=defaults["stability_score_thresh"],
            tooltip="Keep masks that change little when the threshold moves (SAM 2's "
            "stability_score_thresh)",
        )
        self.segment_all = PushButton(text="Segment everything (this slice)")
        self.source = ComboBox(label="labels layer", choices=self._label_layers)
        self.source.tooltip = "A Labels layer (e.g. from Cellpose or StarDist) to take objects from"
        self.from_labels = PushButton(text="Objects from labels (this slice)")
        self.use_painted = PushButton(text="Painted mask → prompt (this object)")
        self.use_painted.tooltip = (
            "Use what is painted in SAM2 labels for the current object on this slice as its "
            "prompt (brush strokes do this by themselves)"
        )
        self.widgets = [
            self.points_per_side,
            self.iou_threshold,
            self.stability_threshold,
            self.segment_all,
            self.source,
            self.from_labels,
            self.use_painted,
        ]
        self.segment_all.changed.connect(self.segment_everything)
        self.from_labels.changed.connect(self.objects_from_labels)
        self.use_painted.changed.connect(self.painted_mask_as_prompt)
        self.writing = False  # our own writes into SAM2 labels are not the user's painting
        self._cancel = threading.Event()
        self.set_enabled(False)

    def _label_layers(self, *_):
        """Labels layers to take objects from: never SAM2 labels (this session's or an
        earlier one's), so that the default is the user's own segmentation."""
        own = self.widget.labels_layer
        return [
            layer
            for layer in self.widget.viewer.layers
            if isinstance(layer, Labels)
            and layer is not own
            and SAM2_META not in getattr(layer, "metadata", {})
        ]

    def set_enabled(self, on: bool) -> None:
        for w in (self.segment_all, self.from_labels, self.use_painted):
            w.enabled = on

    # ------------------------------------------------------------------ segment everything
    def segment_everything(self, *_) -> None:
        """Find every object on the slice shown, in the background, with a progress bar; each
        mask becomes a new object (ids after the highest in use)."""
        w = self.widget
        if w.session is None:
            return
        frame = w.current_frame()
        options = {
            "points_per_side": int(self.points_per_side.value),
            "pred_iou_thresh": float(self.iou_threshold.value),
            "stability_score_thresh": float(self.stability_threshold.value),
            "tiles": "auto",  # big slices in native-resolution windows (docs/big-images.md)
        }
        total = options["points_per_side"] ** 2  # until the generator reports its own total
        if not w.start_progress(
            total, "SAM 2: segmenting everything", cancel=self._cancel.set, tab="Many objects"
        ):
            return  # one long task at a time (a double click starts it once)
        self._cancel.clear()
        w.feedback.say(f"Segmenting everything on slice {frame}…")
        size = w.session.tracker.model.config.image_size
        tile, _ = tile_geometry(size, None, None)
        if resolve_tiles("auto", tuple(w.geometry.spatial_shape), size, tile):
            w.feedback.say(
                f"Segmenting everything on slice {frame} in windows of {tile} pixels at full "
                "resolution (the slice is larger than the model's input)…"
            )
        w._run(
            self._generate,
            frame,
            options,
            yielded=self._advance,
            returned=lambda records: self._add_found(frame, records),
            finished=w.end_progress,
        )

    def _generate(self, frame: int, options: dict):
        """A generator for a worker: yields clicks done, returns the records. The generator runs
        in a thread of its own, so that progress reaches the bar and Cancel reaches it."""
        session = self.widget.session
        updates: queue.Queue = queue.Queue()
        outcome: dict = {}

        def report(done, total):
            if self._cancel.is_set():
                raise Cancelled()
            updates.put((done, total))

        def run():
            try:
                outcome["records"] = session.segment_everything(frame, report, **options)
            except BaseException as e:  # handed to the worker thread below
                outcome["error"] = e
            finally:
                updates.put(None)

        thread = threading.Thread(target=run, name="napari-sam2-everything", daemon=True)
        thread.start()
        shown = 0
        try:
            while (update := updates.get()) is not None:
                done, total = update
                yield done - shown, total
                shown = done
        finally:  # also when the worker is quit: stop the generator thread, then wait for it
            if thread.is_alive():
                self._cancel.set()
            thread.join()
        if isinstance(outcome.get("error"), Cancelled):
            return None
        if "error" in outcome:
            raise outcome["error"]
        return outcome["records"]

    def _advance(self, update) -> None:
        """Clicks done since the last update, and the total the generator counts (tiled:
        every window's clicks)."""
        step, total = update
        self.widget.feedback.bar.max = max(1, int(total))
        self.widget.advance_progress(step)

    def _add_found(self, frame: int, records) -> None:
        w = self.widget
        if records is None:
            w.feedback.done("Segment everything cancelled; nothing was added.")
            return
        if not records:
            w.feedback.done(
                f"Nothing found on slice {frame}; lower 'everything: min. quality' or click."
            )
            return
        start = self._next_id()
        shape = w.geometry.spatial_shape
        found = masks_to_labels(
            records, shape, dtype=label_dtype_for(start + len(records)), start=start
        )
        self._add_objects(frame, found, f"Segment everything: {len(records)} objects")

    # ------------------------------------------------------------------ labels layer
    def objects_from_labels(self, *_) -> None:
        """Every object of the chosen Labels layer's current slice becomes an object here."""
        w = self.widget
        layer = self.source.value
        if w.session is None or layer is None:
            w.show_problem("Pick a Labels layer (e.g. a Cellpose result) first.")
            return
        frame = w.current_frame()
        try:
            source = _slice_of(layer, w)
        except ValueError as e:
            w.show_problem(str(e))
            return
        ids = [int(i) for i in np.unique(source) if i > 0]
        if not ids:
            w.show_problem(f"'{layer.name}' has no labels on slice {frame}.")
            return
        used = set(w.used_ids())
        if used & set(ids):  # keep the layer's ids unless they clash with objects in use
            start = max(used) + 1
            lookup = np.zeros(int(source.max()) + 1, dtype=label_dtype_for(start + len(ids)))
            lookup[ids] = np.arange(start, start + len(ids))
            source = lookup[source]
            note = f" (renumbered from {start}: its ids were in use)"
        else:
            note = ""
        self._add_objects(frame, source, f"'{layer.name}': {len(ids)} objects{note}")

    # ------------------------------------------------------------------ painting
    def painted_mask_as_prompt(self, *_) -> None:
        """The current object's painted labels on the slice shown become its prompt there."""
        w = self.widget
        if w.session is None:
            return
        self.apply_painting({w.current_frame(): {int(w.obj_id.value)}})

    def on_paint(self, event) -> None:
        """napari's paint event of SAM2 labels: the painted objects become mask prompts on the
        painted slices (new ids become new objects; erased objects are absent there). The
        stroke and its prompts are one undoable step."""
        w = self.widget
        if self.writing or w.session is None:
            return
        step = w.history.push(Step("painting"))
        patch = paint_patch(w.labels_layer.data, event.value)
        if patch is not None:
            w.labels_layer.data[patch.region] = patch.after  # (napari may write it after this)
            w.record(step, patch)
            w._recount(frames_of(patch.region, w.geometry))
        touched = painted_objects(event.value, w.geometry)
        objects = set(w.session.obj_ids)
        prompts = {}
        for frame, (new, old) in touched.items():
            ids = new | (old & objects)  # an erased label that is not an object stays unknown
            if ids:
                prompts[frame] = ids
        self.apply_painting(prompts, step)
        w.refresh_objects()

    def apply_painting(self, touched: dict[int, set[int]], step=None, write=True) -> None:
        """The painted labels of these objects on these slices become their prompts there."""
        w = self.widget
        if not touched:
            return
        if step is None:
            step = w.history.push(Step("painted mask as prompt"))
        before = {
            frame: (set(ids), w.session.mask_prompted(frame)) for frame, ids in touched.items()
        }
        for frame, ids in touched.items():
            labels = np.array(w.label_view()[frame], copy=True)
            w.feedback.say(f"Painted objects {sorted(ids)} on slice {frame} become prompts…")
            w.run_step(
                w.session.add_label_prompts,
                frame,
                labels,
                sorted(ids),
                returned=lambda outcome: self._show_added(outcome, step=step, write=write),
            )
        step.undo_extra = lambda: self._unpaint(before)
        step.redo_extra = lambda: self.apply_painting(touched, step, write=False)

    def _unpaint(self, before: dict[int, tuple[set[int], set[int]]]) -> None:
        """Prompts as they were before a painting (its pixels are back already): objects
        newly mask-prompted lose that prompt; the others take their mask from the labels."""
        w = self.widget
        view = w.label_view()

        def shown(outcome):
            w.show_sync(outcome, write=False)

        for frame, (ids, masked) in before.items():
            if ids - masked:
                w.run_step(
                    w.session.remove_mask_prompts, frame, sorted(ids - masked), returned=shown
                )
            if ids & masked:
                labels = np.array(view[frame], copy=True)
                w.run_step(
                    w.session.add_label_prompts, frame, labels, sorted(ids & masked), returned=shown
                )

    # ------------------------------------------------------------------ shared
    def _add_objects(self, frame: int, labels: np.ndarray, what: str) -> None:
        """Write ``labels`` (new ids) into SAM2 labels where the slice is background, then
        prompt every new id by its mask there."""
        w = self.widget
        view = w.label_view()
        current = np.asarray(view[frame])
        merged = np.where((current == 0) & (labels > 0), labels, current).astype(current.dtype)
        # New objects are what shows through on background (masks hidden by others, or by labels
        # already on the slice, do not become objects).
        shown = np.unique(np.where(current == 0, labels, 0))
        ids = [int(i) for i in shown if i > 0]
        if not ids:
            w.show_problem(f"{what}: every object overlaps labels already on slice {frame}.")
            return
        step = w.history.push(Step(what.split(":")[0]))
        self.write_frame(frame, merged, step)
        w.feedback.say(f"{what} on slice {frame}: prompting…")
        w.run_step(
            w.session.add_label_prompts,
            frame,
            merged,
            ids,
            returned=lambda outcome: self._show_added(outcome, what, step),
        )

        def forget():
            for obj_id in ids:
                if obj_id in w.session.obj_ids:
                    w.session.remove_object(obj_id)

        def again():
            w.run_step(
                w.session.add_label_prompts,
                frame,
                merged,
                ids,
                returned=lambda outcome: w.show_sync(outcome, write=False),
            )

        step.undo_extra, step.redo_extra = forget, again

    def _show_added(
        self, outcome, what: str = "Painted correction", step=None, write: bool = True
    ) -> None:
        w = self.widget
        w.show_sync(outcome, step, write)
        if not write:
            return
        dropped = f"; too small for the model: {list(outcome.removed)}" if outcome.removed else ""
        w.feedback.done(f"{what} on slice {outcome.frame}: done{dropped}. Propagate to track them.")

    def write_frame(self, frame: int, new: np.ndarray, step=None) -> None:
        """Write one slice of SAM2 labels as ours (not the user's painting), into ``step``."""
        w = self.widget
        view = w.label_view()
        current = np.array(view[frame], copy=True)
        patch = frame_patch(w.geometry, frame, current, new)
        if patch is None:
            return
        view[frame] = new
        w.labels_layer.refresh()
        w.record(step, patch)
        w._recount([frame])

    def _next_id(self) -> int:
        return max(self.widget.used_ids(), default=0) + 1


def _slice_of(layer: Labels, widget: SAM2Widget) -> np.ndarray:
    """The (H, W) labels of ``layer`` on the slice shown, for a layer shaped like the image's
    labels or a single (H, W) label image."""
    geometry = widget.geometry
    data = layer.data[0] if layer.multiscale else layer.data
    if tuple(data.shape) == tuple(geometry.labels_shape):
        return np.asarray(geometry.label_frames(data)[widget.current_frame()])
    if tuple(data.shape) == tuple(geometry.spatial_shape):
        return np.asarray(data)
    raise ValueError(
        f"'{layer.name}' has shape {tuple(data.shape)}; it must match the image "
        f"{tuple(geometry.labels_shape)} or one slice {tuple(geometry.spatial_shape)}"
    )


def painted_objects(atoms, geometry) -> dict[int, tuple[set[int], set[int]]]:
    """Slice -> (ids painted, ids painted over or erased) of napari's paint-event atoms, for the
    tracked slices only (a stroke on another Z of a 4-D stack is not a prompt)."""
    touched: dict[int, tuple[set[int], set[int]]] = {}

    def note(frame, new, old):
        entry = touched.setdefault(int(frame), (set(), set()))
        entry[0].update(int(i) for i in new if i > 0)
        entry[1].update(int(i) for i in old if i > 0)

    for atom in atoms:
        if hasattr(atom, "slice_key"):  # napari's masked atom: a bounding box and one value
            old = np.unique(atom.old_values).tolist()
            for frame in _frames_of_slices(atom.slice_key, geometry):
                note(frame, [atom.new_value], old)
            continue
        indices, old_values, new_values = atom
        n = len(indices[0])
        old_values = np.broadcast_to(np.asarray(old_values), (n,))
        new_values = np.broadcast_to(np.asarray(new_values), (n,))
        on_track = np.ones(n, bool)
        for axis, index in geometry.fixed.items():
            on_track &= np.asarray(indices[axis]) == index
        if geometry.stack_axis is None:
            frames = np.zeros(n, int)
        else:
            frames = np.asarray(indices[geometry.stack_axis])
        for frame in np.unique(frames[on_track]):
            here = on_track & (frames == frame)
            note(frame, np.unique(new_values[here]), np.unique(old_values[here]))
    return touched


def _frames_of_slices(key, geometry) -> list[int]:
    for axis, index in geometry.fixed.items():
        s = key[axis]
        if not (s.start or 0) <= index < (s.stop if s.stop is not None else index + 1):
            return []
    if geometry.stack_axis is None:
        return [0]
    s = key[geometry.stack_axis]
    return list(range(s.start or 0, s.stop if s.stop is not None else geometry.num_frames))


__all__ = ["ObjectTools", "painted_objects"]
