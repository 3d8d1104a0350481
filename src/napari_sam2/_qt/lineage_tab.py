"""Lineage in the widget: the *find new objects* and *detect divisions* options of propagation,
a napari Tracks layer (with the division graph) that follows the propagation, the parents and
daughters in the object list, the user's corrections (mark a division, join, cut) and the
export of tracks (CTC, GEFF, CSV).

The lineage itself is the engine's (:mod:`napari_sam2.engine.lineage`); the corrections are
kept here too (``edits``), handed to every propagation and saved with the session, so that
they survive propagating again and the next day. The Tracks layer is built slice by slice
from the labels each propagated slice writes (centroids of that slice only), redrawn at most
every :data:`REDRAW` seconds and at the end.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, Label, LineEdit, PushButton, SpinBox
from scipy import ndimage

from ..engine.lineage_edits import edit_from_dict, edit_to_dict
from ..io.errors import InputError
from ..io.tracks import parents_of, write_ctc, write_geff, write_tracks_csv

if TYPE_CHECKING:
    from .widget import SAM2Widget

TRACKS_NAME = "SAM2 tracks"
REDRAW = 0.5  # seconds between redraws of the Tracks layer while propagating
FORMATS = ("CTC folder", "GEFF", "CSV")


def lineage_note(obj_id: int, table) -> str:
    """What the object list adds to a track's row: its parent and daughters, if any."""
    parent = next((t.parent for t in table if t.id == obj_id and t.parent), 0)
    kids = [t.id for t in table if t.parent == obj_id]
    note = f" · from {parent}" if parent else ""
    if kids:
        note += " · → " + ", ".join(map(str, kids))
    return note


class LineageTools:
    """The lineage controls: ``options_widgets`` (in the propagation tab) and ``widgets`` (the
    Lineage tab), serving ``widget``."""

    def __init__(self, widget: SAM2Widget) -> None:
        self.widget = widget
        self.new_every = SpinBox(
            label="find new objects every N slices (0: off)",
            min=0,
            max=10_000_000,
            value=0,
            tooltip="Segment everything on slices 0, N, 2N, …: cells not yet tracked become new "
            "objects, tracked from there on (uses the Many objects tab's settings)",
        )
        self.divisions = CheckBox(label="detect divisions (forward only)", value=False)
        self.divisions.tooltip = (
            "A mask that splits into two lasting parts becomes two daughter tracks; "
            "followed forward in time only"
        )
        self.options_widgets = [self.new_every, self.divisions]
        self.track = SpinBox(label="track", min=1, max=2**31 - 1, value=1)
        self.others = LineEdit(label="other track(s)", value="")
        self.others.tooltip = "Daughters of a division (e.g. '5, 6'), or the track to join"
        self.divide_button = PushButton(text="Mark division on this slice (track → others)")
        self.join_button = PushButton(text="Join track with other track")
        self.cut_button = PushButton(text="Cut track on this slice")
        self.take_back = PushButton(text="Take back the last correction")
        self.edits_label = Label(value="No corrections.")
        self.export_format = ComboBox(label="tracks format", choices=list(FORMATS))
        self.export_path = FileEdit(label="tracks to", mode="w", value="")
        self.export_button = PushButton(text="Export tracks")
        self.widgets = [
            self.track, self.others, self.divide_button, self.join_button, self.cut_button,
            self.take_back, self.edits_label, self.export_format, self.export_path,
            self.export_button,
        ]  # fmt: skip
        self.divisions.changed.connect(self._on_divisions)
        self.divide_button.changed.connect(self.mark_division)
        self.join_button.changed.connect(self.join)
        self.cut_button.changed.connect(self.cut)
        self.take_back.changed.connect(self.take_back_last)
        self.export_button.changed.connect(self.export)
        self.edits: list = []  # the user's corrections (engine.lineage_edits), saved
        self.table: list = []  # the tracks as last known
        self.points: dict[int, dict[int, tuple[float, float]]] = {}  # slice -> track -> (y, x)
        self.layer = None
        self._latest = None  # the table the worker read after its latest slice
        self._drawn_at = 0.0
        self._following = False  # this propagation draws tracks

    # ------------------------------------------------------------------ state
    def set_enabled(self, on: bool) -> None:
        for w in (self.divide_button, self.join_button, self.cut_button, self.take_back):
            w.enabled = on
        self.export_button.enabled = on
        if on:  # a new session: no tracks, no corrections yet (a load restores them after)
            self.edits, self.table, self.points, self._latest = [], [], {}, None
            self.layer = None
            self._show_edits()

    def saved_edits(self) -> list[dict]:
        """The corrections as the session folder stores them."""
        return [edit_to_dict(e) for e in self.edits]

    def restore(self, edits) -> None:
        """The corrections of a loaded session (applied by the next propagation)."""
        self.edits = [e if not isinstance(e, dict) else edit_from_dict(e) for e in edits]
        self._show_edits()

    def note(self, obj_id: int) -> str:
        return lineage_note(obj_id, self.table)

    def _on_divisions(self, on: bool) -> None:
        w = self.widget
        if on and w.direction.value != "forward":
            w.direction.value = "forward"
            w.feedback.say(
                "Divisions are followed forward in time: the direction is now 'forward'."
            )

    # ------------------------------------------------------------------ propagation
    def propagate_options(self, direction: str) -> dict:
        """The lineage arguments of a propagation; ValueError with the fix if they cannot be."""
        options = {"divisions": bool(self.divisions.value)}
        if options["divisions"] and direction != "forward":
            raise ValueError(
                "Divisions are followed forward in time: choose the direction 'forward' (a "
                "time-lapse), or untick 'detect divisions'."
            )
        if self.new_every.value:
            options["new_objects"] = int(self.new_every.value)
            tools = self.widget.objects
            from ..engine.automatic import AutomaticMaskGenerator
            from ..engine.lineage import LineageOptions

            finder = AutomaticMaskGenerator(
                self.widget.session.tracker.model,
                points_per_side=int(tools.points_per_side.value),
                pred_iou_thresh=float(tools.iou_threshold.value),
                stability_score_thresh=float(tools.stability_threshold.value),
                channel=self.widget.session.tracker.source.channel,
            )
            options["lineage_options"] = LineageOptions(
                divisions=options["divisions"], finder=finder
            )
        if self.edits and direction == "forward":
            options["lineage_edits"] = list(self.edits)
        return options

    def results(self, direction, start, stop, options: dict, obj_ids=None):
        """The propagation (of ``obj_ids`` only, if given) for a worker: each result, the
        lineage read after it (in the worker, under the session's lock)."""
        session = self.widget.session
        self._following = bool(
            options.get("divisions") or options.get("new_objects") or self.table or self.edits
        )
        for result in session.propagate(direction, start, stop, obj_ids=obj_ids, **options):
            if self._following:
                self._latest = session.lineage(result.frame, keep=False)[0]
            yield result

    def on_frame(self, result) -> None:
        """A propagated slice was written: its tracks' centroids, and a redraw now and then."""
        if not self._following:
            return
        frame = np.asarray(self.widget.label_view()[result.frame])
        ids = [int(i) for i in result.obj_ids]
        self.points[result.frame] = _centroids(frame, ids)
        if self._latest is not None:
            self.table = self._latest
        if time.perf_counter() - self._drawn_at > REDRAW:
            self.draw()

    def on_done(self) -> None:
        """The propagation ended: the final table, the layer drawn."""
        w = self.widget
        if not self._following or w.session is None:
            return
        self.table, edits = w.session.lineage()
        self.edits = edits or self.edits
        self.draw()

    def draw(self) -> None:
        """The Tracks layer from the centroids known (made on first use)."""
        self._drawn_at = time.perf_counter()
        w = self.widget
        geometry = w.geometry
        rows = [
            (track, *geometry.index(frame), y, x)
            for frame in sorted(self.points)
            for track, (y, x) in sorted(self.points[frame].items())
        ]
        if not rows:
            return
        data = np.array(rows, dtype=float)
        present = set(int(i) for i in data[:, 0])
        graph = {t.id: [t.parent] for t in self.table if t.parent and {t.id, t.parent} <= present}
        if self.layer is None or self.layer not in w.viewer.layers:
            from .prompting import META

            n = geometry.ndim_spatial
            self.layer = w.viewer.add_tracks(
                data,
                graph=graph,
                name=TRACKS_NAME,
                scale=w.image_layer.scale[:n],
                translate=w.image_layer.translate[:n],
                tail_length=30,
                metadata={META: {"image": w.image_layer.name, "role": "tracks"}},
            )
            w.viewer.layers.selection.active = w.points
        else:
            self.layer.graph = {}
            self.layer.data = data
            self.layer.graph = graph

    # ------------------------------------------------------------------ corrections
    def mark_division(self, *_) -> None:
        others = self._others()
        if others is not None:
            frame = self.widget.current_frame()
            self._edit(
                "divide",
                frame,
                int(self.track.value),
                others,
                what=f"Track {self.track.value} divides on slice {frame}",
            )

    def join(self, *_) -> None:
        others = self._others()
        if others is None:
            return
        if len(others) != 1:
            self.widget.show_problem("Join: give one other track to join the track with.")
            return
        self._edit(
            "join",
            int(self.track.value),
            others[0],
            what=f"Tracks {self.track.value} and {others[0]} joined",
        )

    def cut(self, *_) -> None:
        frame = self.widget.current_frame()
        what = f"Track {self.track.value} cut on slice {frame}"
        self._edit("cut", int(self.track.value), frame, what=what)

    def take_back_last(self, *_) -> None:
        if not self.edits:
            self.widget.show_problem("There is no lineage correction to take back.")
            return
        self._edit("remove_edit", what=f"Taken back: {self.edits[-1]}")

    def _others(self) -> list[int] | None:
        text = self.others.value.replace(",", " ").split()
        if not text or not all(t.isdigit() and int(t) > 0 for t in text):
            self.widget.show_problem(
                f"'other track(s)': give track ids separated by commas (e.g. '5, 6'), got "
                f"{self.others.value!r}."
            )
            return None
        return [int(t) for t in text]

    def _edit(self, action: str, *args, what: str) -> None:
        w = self.widget
        if w.session is None:
            w.show_problem("Start a session and propagate first.")
            return
        if w.task is not None:
            w.show_problem(f"Busy {w.task}: correct the lineage once it has finished.")
            return
        try:
            moves = w.session.lineage_edit(action, *args)
        except ValueError as e:
            w.show_problem(f"{str(e)[:1].upper()}{str(e)[1:]}.")
            return
        self.table, self.edits = w.session.lineage()
        self._relabel(moves)
        self._show_edits()
        self.draw()
        w.refresh_objects()
        w.feedback.done(f"{what}; kept when you propagate again and saved with the session.")

    def _relabel(self, moves) -> None:
        """Labels written so far take the corrected ids (and so do the tracks' centroids)."""
        w = self.widget
        view, last = w.label_view(), w.geometry.num_frames - 1
        changed = []
        for first, end, old, new in moves:
            for frame in range(first, min(end, last) + 1):
                if old in w._labelled.get(frame, ()):
                    data = np.array(view[frame], copy=True)
                    data[data == old] = new
                    view[frame] = data
                    changed.append(frame)
                here = self.points.get(frame)
                if here is not None and old in here:
                    here[new] = here.pop(old)
        if changed:
            w._recount(sorted(set(changed)))
            w.labels_layer.refresh()

    def _show_edits(self) -> None:
        if not self.edits:
            self.edits_label.value = "No corrections."
            return
        shown = "; ".join(map(str, self.edits[-3:]))
        more = f" (and {len(self.edits) - 3} more)" if len(self.edits) > 3 else ""
        self.edits_label.value = f"Corrections: {shown}{more}"

    # ------------------------------------------------------------------ export
    def export(self, *_) -> None:
        """Write the tracks (labels values = track ids, parents from the lineage) in a
        worker: a CTC folder, a GEFF graph or a CSV of measurements per track and slice."""
        w = self.widget
        path = self.export_path.value
        if w.session is None or path in (None, "") or str(path) in ("", "."):
            w.show_problem("Start a session and choose where the tracks go ('tracks to').")
            return
        fmt = self.export_format.value
        labels = w.label_view()
        parents = parents_of(self.table)
        frames = w.geometry.frames(w.image_layer.data[0] if w.image_layer.multiscale
                                   else w.image_layer.data)  # fmt: skip

        def write():
            try:
                if fmt == "CTC folder":
                    write_ctc(labels, path, parents)
                elif fmt == "GEFF":
                    write_geff(labels, path, parents, overwrite=True)
                else:
                    write_tracks_csv(labels, path, image=frames, parents=parents)
            except InputError as e:  # in the widget's words
                raise ValueError(str(e).replace("; give another folder or --overwrite", ": "
                                 "choose an empty folder")) from None  # fmt: skip
            return path

        w.feedback.say(f"Writing the tracks ({fmt}) to {path}…")
        w.run(write, returned=lambda p: w.feedback.done(f"Tracks written ({fmt}) to {p}."))


def _centroids(frame: np.ndarray, ids: list[int]) -> dict[int, tuple[float, float]]:
    """(row, col) centroid of each id present on one (H, W) labels slice."""
    if not ids:
        return {}
    areas = ndimage.sum_labels(np.ones(frame.shape), frame, ids)
    present = [i for i, a in zip(ids, areas) if a > 0]
    if not present:
        return {}
    centres = ndimage.center_of_mass(np.ones(frame.shape), frame, present)
    return {i: (float(c[0]), float(c[1])) for i, c in zip(present, centres)}
