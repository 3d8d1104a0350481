"""The napari dock widget: click on a slice, see the mask, propagate through the stack.

Thin by design: prompts are read from napari layers (``layers.py``), all tracking logic is the
Qt-free :class:`~napari_sam2.engine.session.PromptSession`, and everything slow runs on napari
worker threads with a progress bar and Cancel.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels, Points, Shapes
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info

from ..engine.session import PromptSession
from ..engine.stack import StackError, StackGeometry
from ..model.config import DEFAULT_MODEL, MODEL_NAMES
from ..model.precision import PRECISIONS
from ..weights import WeightsError
from . import layers as L
from .objects import ObjectTools

# Errors that are the user's to fix (bad file, offline, bad prompt): shown as a message, not as a
# traceback. Anything else is a bug and reaches napari's error reporting.
EXPECTED_ERRORS = (ValueError, KeyError, OSError, WeightsError)


@dataclass(frozen=True)
class _Failure:
    error: Exception


def _full_resolution(image: Image):
    """The array SAM 2 reads: a multiscale image's finest level, else the data itself."""
    return image.data[0] if image.multiscale else image.data


def _guarded(fn):
    """``fn`` with expected errors returned (or yielded) as :class:`_Failure` values."""
    if inspect.isgeneratorfunction(fn):

        def generator(*args):
            try:
                return (yield from fn(*args))
            except EXPECTED_ERRORS as e:
                yield _Failure(e)

        return generator

    def call(*args):
        try:
            return fn(*args)
        except EXPECTED_ERRORS as e:
            return _Failure(e)

    return call


POINTS_NAME, BOXES_NAME, LABELS_NAME = "SAM2 clicks", "SAM2 boxes", "SAM2 labels"
EMBEDDING_CACHE = 8  # slices whose image embedding is kept (LRU)


class SAM2Widget(Container):
    """Dock widget. ``viewer`` is the napari viewer it works on."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = viewer
        self.session: PromptSession | None = None
        self.geometry: StackGeometry | None = None
        self.image_layer: Image | None = None
        self.points: Points | None = None
        self.boxes: Shapes | None = None
        self.labels_layer: Labels | None = None
        self.worker = None  # the running or last worker (tests wait on it)
        self.propagation_worker = None
        self._workers: set = set()  # every worker still running
        self._models: dict[tuple, object] = {}
        self._progress = None

        self.image = ComboBox(label="image", choices=self._image_choices)
        self.model_name = ComboBox(label="model", choices=MODEL_NAMES, value=DEFAULT_MODEL)
        self.checkpoint = FileEdit(label="checkpoint", mode="r", filter="*.pt", value="")
        self.checkpoint.tooltip = "Official .pt file; leave empty to download on first use"
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"])
        self.input_size = ComboBox(
            label="input size",
            choices=[1024, 512, 256],
            value=1024,
            tooltip="SAM 2's input resolution: 1024 is the official one; smaller is faster",
        )
        self.precision = ComboBox(
            label="precision",
            choices=list(PRECISIONS),
            value="fp32",
            tooltip="fp32: exact. bf16/fp16: about twice as fast where the device computes them "
            "natively (bf16: CUDA or a CPU with AVX512-BF16/AMX; fp16: CUDA, Apple), slightly "
            "different masks; auto: the fastest this device has",
        )
        self.compile = CheckBox(label="compile the network (GPU)", value=False)
        self.compile.tooltip = "torch.compile: faster on a GPU after a minute of compilation"
        self.embeddings = FileEdit(label="embeddings", mode="w", filter="*.zarr", value="")
        self.embeddings.tooltip = (
            "A store of the image's embeddings (napari-sam2 embed), reused and filled; empty: a "
            "temporary one"
        )
        self.stack_axis = ComboBox(label="track along", choices=self._axis_choices)
        self.new_labels = CheckBox(label="write into a new Labels layer", value=False)
        self.start_button = PushButton(text="Start segmenting")
        self.obj_id = SpinBox(label="object id", min=1, max=65535, value=1)
        self.new_object = PushButton(text="New object")
        self.negative = CheckBox(label="negative clicks (or Shift-click)", value=False)
        self.undo = PushButton(text="Undo last click")
        self.direction = ComboBox(
            label="direction", choices=["forward", "backward", "both"], value="both"
        )
        self.first = SpinBox(label="from frame (-1: auto)", min=-1, max=1_000_000, value=-1)
        self.last = SpinBox(label="to frame (-1: end)", min=-1, max=1_000_000, value=-1)
        self.propagate_button = PushButton(text="Propagate")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="Pick an image and press Start.")
        self._cancel_action = None  # what Cancel stops: a propagation, segment everything
        self.objects = ObjectTools(self)
        self.extend(
            [
                self.image,
                self.model_name,
                self.checkpoint,
                self.device,
                self.input_size,
                self.precision,
                self.compile,
                self.embeddings,
                self.stack_axis,
                self.new_labels,
                self.start_button,
                self.obj_id,
                self.new_object,
                self.negative,
                self.undo,
                self.objects,
                self.direction,
                self.first,
                self.last,
                self.propagate_button,
                self.cancel_button,
                self.status,
            ]
        )
        self.start_button.changed.connect(self.start)
        self.new_object.changed.connect(self.next_object)
        self.obj_id.changed.connect(self._update_defaults)
        self.negative.changed.connect(self._update_defaults)
        self.undo.changed.connect(self.undo_last_click)
        self.propagate_button.changed.connect(self.propagate)
        self.cancel_button.changed.connect(self.cancel)
        self.image.changed.connect(lambda *_: self.stack_axis.reset_choices())
        viewer.layers.events.inserted.connect(self._on_layer_inserted)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        viewer.dims.events.current_step.connect(self._on_slider)
        self._set_session_enabled(False)

    # ------------------------------------------------------------------ choices
    def _image_choices(self, *_):
        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _axis_choices(self, *_):
        layer = self.image.value
        if layer is None:
            return [("none", -1)]
        n = layer.ndim - 2
        if n <= 0:
            return [("single image", -1)]
        names = [f"axis {i} ({layer.data.shape[i]})" for i in range(n)]
        return [(name, i) for i, name in enumerate(names)]

    # ------------------------------------------------------------------ start
    def start(self, *_) -> None:
        """Load the model (in the background) and set up prompt and label layers."""
        image = self.image.value
        if image is None:
            show_error("Open an image first (File → Open Sample → SAM 2 has examples).")
            return
        try:
            geometry = self._geometry_for(image)
        except StackError as e:
            show_error(str(e))
            return
        checkpoint = self.checkpoint.value
        checkpoint = None if checkpoint in (None, "") or Path(checkpoint).is_dir() else checkpoint
        key = (
            self.model_name.value,
            str(checkpoint),
            self.device.value,
            self.input_size.value,
            self.precision.value,
            bool(self.compile.value),
        )
        self.status.value = f"Loading {self.model_name.value}…"
        self._run(
            self._load_model,
            key,
            checkpoint,
            returned=lambda model: self._begin(image, geometry, model, key),
        )

    def use_model(self, model, image: Image | None = None) -> None:
        """Start with an already loaded model (scripts and tests); synchronous."""
        image = image or self.image.value
        self._begin(image, self._geometry_for(image), model, ("given",))

    def _load_model(self, key, checkpoint):
        if key not in self._models:
            import napari_sam2 as ns

            name, _, device, size, precision, compile_ = key
            self._models[key] = ns.load_model(
                name,
                checkpoint=checkpoint,
                device=None if device == "auto" else device,
                image_size=int(size),
                precision=precision,
                compile=compile_,
            )
        return self._models[key]

    def _geometry_for(self, image: Image) -> StackGeometry:
        shape = tuple(_full_resolution(image).shape)
        rgb = bool(image.rgb)
        lead = image.ndim - 2
        displayed = tuple(self.viewer.dims.displayed[-2:]) if self.viewer.dims.ndisplay == 2 else ()
        if displayed and tuple(d - (self.viewer.dims.ndim - image.ndim) for d in displayed) != (
            image.ndim - 2,
            image.ndim - 1,
        ):
            raise StackError("Show the last two axes (Y, X) in 2-D view to segment slices.")
        if lead <= 0:
            return StackGeometry(shape, rgb)
        axis = self.stack_axis.value
        axis = 0 if axis is None or axis < 0 else int(axis)
        position = np.round(image.world_to_data(self.viewer.dims.point)).astype(int)
        fixed = {a: int(np.clip(position[a], 0, shape[a] - 1)) for a in range(lead) if a != axis}
        return StackGeometry(shape, rgb, axis, fixed)

    def _begin(self, image: Image, geometry: StackGeometry, model, key) -> None:
        if self.session is not None:
            self.session.close()
        self.image_layer, self.geometry = image, geometry
        store = self.embeddings.value
        store = None if store in (None, "") or str(store) in ("", ".") else str(store)
        try:
            self.session = PromptSession(
                model,
                geometry.frames(_full_resolution(image)),
                feature_cache=EMBEDDING_CACHE,
                embeddings=store,
            )
        except EXPECTED_ERRORS as e:  # an embeddings store made for another image, say
            self.session = None
            self._set_session_enabled(False)
            self.show_problem(f"SAM 2: {e}")
            return
        common = {
            "scale": image.scale[: geometry.ndim_spatial],
            "translate": image.translate[: geometry.ndim_spatial],
        }
        ndim = geometry.ndim_spatial
        if self.labels_layer is not None:
            self.labels_layer.events.paint.disconnect(self.objects.on_paint)
        self.labels_layer = self._labels_layer(geometry, common)
        self.labels_layer.events.paint.connect(self.objects.on_paint)
        self.objects.source.reset_choices()
        if self.points is None or self.points not in self.viewer.layers:
            self.points = self.viewer.add_points(
                np.zeros((0, ndim)),
                ndim=ndim,
                name=POINTS_NAME,
                size=6,
                **common,
                features={L.OBJ_ID: np.zeros(0, int), L.POSITIVE: np.zeros(0, bool)},
            )
            self.points.events.data.connect(self._on_prompts_changed)
            # Before napari's own add-point handler: Shift makes this click negative.
            self.points.mouse_drag_callbacks.insert(0, self._polarity_from_modifiers)
        if self.boxes is None or self.boxes not in self.viewer.layers:
            self.boxes = self.viewer.add_shapes(
                ndim=ndim,
                name=BOXES_NAME,
                edge_color="yellow",
                face_color="transparent",
                edge_width=2,
                features={L.OBJ_ID: np.zeros(0, int)},
                **common,
            )
            self.boxes.events.data.connect(self._on_prompts_changed)
        self._update_defaults()
        self.points.mode = "add"
        self.viewer.layers.selection.active = self.points
        self._set_session_enabled(True)
        frames = geometry.num_frames
        self.status.value = (
            f"{key[0]} ready · {frames} frame(s). Click to add points (object "
            f"{self.obj_id.value}); draw boxes in '{BOXES_NAME}'."
        )
        self._on_slider()

    def _labels_layer(self, geometry: StackGeometry, common) -> Labels:
        existing = self.labels_layer
        if (
            not self.new_labels.value
            and existing is not None
            and existing in self.viewer.layers
            and tuple(existing.data.shape) == geometry.labels_shape
        ):
            return existing
        data = np.zeros(geometry.labels_shape, dtype=np.uint32)
        name = LABELS_NAME if LABELS_NAME not in self.viewer.layers else None
        return self.viewer.add_labels(
            data, name=name or f"{LABELS_NAME} {len(self.viewer.layers)}", **common
        )

    # ------------------------------------------------------------------ prompts
    def _update_defaults(self, *_) -> None:
        if self.points is not None:
            self._set_point_defaults(shift=False)
        if self.boxes is not None:
            self.boxes.feature_defaults = {L.OBJ_ID: int(self.obj_id.value)}
        if self.labels_layer is not None:
            self.labels_layer.selected_label = int(self.obj_id.value)

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
        """Start a new object: the next unused id."""
        self.obj_id.value = max([int(self.obj_id.value), *self.used_ids()]) + 1

    def used_ids(self) -> list[int]:
        """Object ids in use: in the prompt layers and in the tracker."""
        used = []
        for layer in (self.points, self.boxes):
            if layer is not None and len(layer.data):
                used.extend(int(v) for v in layer.features[L.OBJ_ID])
        if self.session is not None:
            used.extend(self.session.obj_ids)
        return used

    def undo_last_click(self, *_) -> None:
        """Remove the most recently added click (its slice is segmented again)."""
        if self.points is not None and len(self.points.data):
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
        if self.session is None:
            return
        L.color_points(self.points)
        points = L.point_rows(self.points, self.image_layer, self.geometry)
        boxes = L.box_rows(self.boxes, self.image_layer, self.geometry)
        frames = sorted(
            {r.frame for r in points} | {r.frame for r in boxes} | self.session.synced_frames()
        )
        session = self.session

        def sync():
            for frame in frames:
                outcome = session.sync_frame(frame, points, boxes)
                if outcome.result is not None or outcome.removed:
                    yield outcome

        self.status.value = "Segmenting…"
        self._run(sync, yielded=self._show_sync, finished=self._ready_message)

    def _show_sync(self, outcome) -> None:
        if outcome.removed:
            L.erase_objects(self.labels_layer, outcome.removed)
        if outcome.result is not None:
            self.write_result(outcome.result, undoable=True)

    def show_sync(self, outcome) -> None:
        """Show the result of a prompt change (masks of new objects stay as in the layer)."""
        if outcome.result is not None:
            self.write_result(outcome.result, undoable=True)

    def write_result(self, result, undoable: bool) -> None:
        """Write a frame's result into SAM2 labels, leaving alone the objects whose prompt on
        that frame is a mask (their labels there are the user's or the generator's)."""
        masked = self.session.mask_prompted(result.frame) if self.session is not None else ()
        if masked:
            result = result.without(masked)
        self.objects._writing = True
        try:
            L.write_result(self.labels_layer, self.geometry, result, undoable=undoable)
        finally:
            self.objects._writing = False

    def label_view(self):
        """SAM2 labels as (T, H, W) frames of the tracked axis."""
        return self.geometry.label_frames(self.labels_layer.data)

    def current_frame(self) -> int:
        """The tracked slice shown by the viewer."""
        if self.geometry.stack_axis is None:
            return 0
        position = self.image_layer.world_to_data(self.viewer.dims.point)
        frame = round(position[self.geometry.stack_axis])
        return int(np.clip(frame, 0, self.geometry.num_frames - 1))

    def _on_slider(self, *_) -> None:
        """Embed the slice now shown, in the background, so the first click on it is fast."""
        if self.session is None or self.geometry.stack_axis is None or self.busy:
            return
        self._run(self.session.embed, self.current_frame(), quiet=True)

    # ------------------------------------------------------------------ propagation
    def propagate(self, *_) -> None:
        """Track every object through the stack, filling the Labels layer as frames arrive."""
        if self.session is None:
            show_error("Press Start and add a prompt first.")
            return
        start = None if self.first.value < 0 else int(self.first.value)
        stop = None if self.last.value < 0 else int(self.last.value)
        try:
            total = self.session.plan(self.direction.value, start, stop)
        except ValueError as e:  # PromptError, bad range
            show_error(str(e))
            return
        self.propagate_button.enabled = False
        self.status.value = f"Propagating {self.direction.value} ({total} frames)…"
        # Signals reach this (main) thread after this method returns: the bar exists by then.
        self.propagation_worker = self._run(
            self.session.propagate,
            self.direction.value,
            start,
            stop,
            yielded=self._show_frame,
            finished=self._propagation_done,
        )
        self.start_progress(total, "SAM 2: propagating", cancel=self.propagation_worker.quit)

    def _show_frame(self, result) -> None:
        self.write_result(result, undoable=False)
        self.labels_layer.refresh()
        self.advance_progress(1)

    def cancel(self, *_) -> None:
        """Stop the work in progress (a propagation after the frame being computed, segment
        everything after the batch of clicks being decoded); results so far are kept."""
        if self._cancel_action is not None:
            self._cancel_action()
        self.status.value = "Cancelling…"

    def start_progress(self, total: int, desc: str, cancel) -> None:
        """A progress bar for long work, and what Cancel does meanwhile."""
        self._progress = progress(total=total, desc=desc)
        self._cancel_action = cancel
        self.cancel_button.enabled = True

    def advance_progress(self, n: int) -> None:
        if self._progress is not None:
            self._progress.update(n)

    def end_progress(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self._cancel_action = None
        self.cancel_button.enabled = False

    def show_problem(self, message: str) -> None:
        """A mistake of the user's: the status line and a notification."""
        self.status.value = message
        show_error(message)

    def _propagation_done(self) -> None:
        done = self._progress.n if self._progress is not None else 0
        total = self._progress.total if self._progress is not None else 0
        self.end_progress()
        self.propagate_button.enabled = True
        if done < total:
            self.status.value = f"Stopped after {done} of {total} frames; Propagate continues."
        else:
            self.status.value = f"Propagated {done} frames."
            show_info(f"SAM 2: propagated {done} frames")

    def _on_layer_inserted(self, *_) -> None:
        self.image.reset_choices()
        self.objects.source.reset_choices()

    def _on_layer_removed(self, event) -> None:
        self.image.reset_choices()
        self.objects.source.reset_choices()
        if event.value is self.image_layer:
            self.end_session()

    def end_session(self) -> None:
        """Stop background work and forget the tracker (the layers stay)."""
        for worker in list(self._workers):
            worker.quit()
        if self.session is not None:
            self.session.close()
        self.session, self.image_layer = None, None
        self._set_session_enabled(False)
        self.status.value = "Pick an image and press Start."

    # ------------------------------------------------------------------ helpers
    def _ready_message(self) -> None:
        self.status.value = f"Ready · object {self.obj_id.value}."

    def _set_session_enabled(self, on: bool) -> None:
        for w in (self.new_object, self.undo, self.propagate_button):
            w.enabled = on
        self.objects.set_enabled(on)

    def _run(self, fn, *args, yielded=None, returned=None, finished=None, quiet=False):
        worker = create_worker(_guarded(fn), *args)
        if inspect.isgeneratorfunction(fn):
            worker.yielded.connect(self._unless_failed(yielded, quiet))
        worker.returned.connect(self._unless_failed(returned, quiet))
        if finished is not None:
            worker.finished.connect(finished)
        if not quiet:
            worker.errored.connect(self._on_error)
        self._workers.add(worker)
        worker.finished.connect(lambda: self._workers.discard(worker))
        self.worker = worker
        worker.start()
        return worker

    def _unless_failed(self, handler, quiet):
        def receive(value):
            if isinstance(value, _Failure):
                if not quiet:
                    self._on_error(value.error)
            elif handler is not None:
                handler(value)

        return receive

    @property
    def busy(self) -> bool:
        """Whether any background work (embedding, segmenting, propagating) is running."""
        return bool(self._workers)  # from creation (not just from start) until finished

    def _on_error(self, error: Exception) -> None:
        self.end_progress()
        self.propagate_button.enabled = self.session is not None
        self.status.value = f"Error: {error}"
        show_error(f"SAM 2: {error}")
