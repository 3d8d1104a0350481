"""The napari dock widget: click on a slice, see the mask, propagate through the stack.

Thin by design: prompts are read from napari layers (``layers.py``), all tracking logic is the
Qt-free :class:`~napari_sam2.engine.session.PromptSession`, and everything slow runs on napari
workers (``feedback.py``) with a progress bar and Cancel. Starting (the model loaded, the
session opened, the SAM2 layers made: ``starting.py``), many objects (``objects.py``), the
object list (``object_list.py``), saved sessions (``session_io.py``), the labels array
(``labels_data.py``) and keyboard shortcuts (``shortcuts.py``) have modules of their own.
"""

from __future__ import annotations

import napari
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, PushButton, SpinBox
from napari.layers import Image, Labels, Points, Shapes
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QSizePolicy, QTabWidget, QWidget

from ..engine.session import PromptSession
from ..engine.stack import StackGeometry
from ..model.config import DEFAULT_MODEL, MODEL_NAMES
from ..model.precision import PRECISIONS
from . import shortcuts
from .export import LabelExport
from .feedback import Feedback, Runner
from .lineage_tab import LineageTools
from .napari_warm_up import warm_up_shapes
from .object_edits import ObjectEditMixin
from .object_list import ObjectList
from .objects import ObjectTools
from .prompting import PromptingMixin
from .propagation import PropagationMixin
from .sessions import SessionMixin
from .starting import StartMixin, full_resolution
from .train_tab import TrainTab
from .window_outline import WindowOutline


def _tip(text: str, method: str) -> str:
    return shortcuts.tooltip(text, method)


def _keep_narrow(container: Container) -> None:
    """Fields take the width the dock gives them instead of asking for theirs (a long file
    path or layer name would otherwise widen the dock and squeeze the canvas)."""
    for w in container:
        if not isinstance(w, (PushButton, CheckBox)):
            vertical = w.native.sizePolicy().verticalPolicy()
            w.native.setSizePolicy(QSizePolicy.Policy.Ignored, vertical)


class _CloseWatcher(QObject):
    """Calls ``on_close`` when the widget leaves its dock (napari's close button unparents the
    widget and keeps it)."""

    def __init__(self, on_close) -> None:
        super().__init__()
        self._on_close = on_close
        self._docked = False

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.ParentChange:
            if obj.parent() is not None:
                self._docked = True
            elif self._docked:
                self._on_close()
        return False


class SAM2Widget(
    StartMixin, PromptingMixin, ObjectEditMixin, PropagationMixin, SessionMixin, Container
):
    """Dock widget. ``viewer`` is the napari viewer it works on."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=False)
        warm_up_shapes()  # napari's first rectangle compiles its triangulation: not on a click
        self.viewer = viewer
        self.session: PromptSession | None = None
        self.geometry: StackGeometry | None = None
        self.image_layer: Image | None = None
        self.points: Points | None = None
        self.boxes: Shapes | None = None
        self.labels_layer: Labels | None = None
        self.labels_data = None
        self.propagation_worker = None
        self.names: dict[int, str] = {}
        self._models: dict[tuple, object] = {}
        self._labelled: dict[int, set[int]] = {}  # frame -> object ids with labels there
        self._stale_after: int | None = None
        self._speed_checked = False
        self._written: set[int] = set()
        self._propagations = 0  # finished so far (a sync finishing after one keeps its message)
        self._after_begin = None
        self._ready_note: str | None = None  # said instead of "Ready" after the next sync
        self._sync_errors: list[str] = []
        self._sync_changed = False
        self._sync_window = None  # the window that answered the last sync (tiles)
        self._cancel_action = None  # what Cancel stops: a propagation, segment everything
        self._task: str | None = None  # the long task running (one at a time)
        self._prompted_meanwhile = False  # prompts changed during the propagation running
        self.feedback = Feedback()
        self.status = self.feedback.status
        self.runner = Runner(self._on_error)
        self._init_history()
        self._init_start()

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
        self.new_labels = CheckBox(label="start afresh (new SAM2 layers)", value=False)
        self.new_labels.tooltip = (
            "Off: an image's existing SAM2 layers are resumed from. On: new layers are made"
        )
        self.start_button = PushButton(text="Start segmenting")
        self.cancel_download = PushButton(text="Cancel", enabled=False)
        self.cancel_download.tooltip = _tip(
            "Stop the model's download (nothing is kept in the cache)", "cancel"
        )
        self.obj_id = SpinBox(label="object id", min=1, max=2**31 - 1, value=1)
        self.new_object = PushButton(text="New object")
        self.new_object.tooltip = _tip("The next unused object id", "next_object")
        self.negative = CheckBox(label="negative clicks (or Shift-click)", value=False)
        self.negative.tooltip = _tip("Clicks mark what is not the object", "toggle_negative")
        self.undo = PushButton(text="Undo last click")
        self.undo.tooltip = _tip(
            "Remove the latest click; its slice is segmented again", "undo_last_click"
        )
        self.undo_button = PushButton(text="Undo")
        self.undo_button.tooltip = (
            "Undo the last click, box, painting, deletion or propagation (Ctrl+Z)"
        )
        self.redo_button = PushButton(text="Redo")
        self.redo_button.tooltip = "Redo what was undone (Ctrl+Shift+Z)"
        self.object_list = ObjectList(
            self._select_object, self.delete_objects, self.go_to_frame, self._rename,
            self.merge_objects, self.relabel_object, lambda ids: self.propagate(obj_ids=ids),
        )  # fmt: skip
        self.objects = ObjectTools(self)
        self.direction = ComboBox(
            label="direction", choices=["forward", "backward", "both"], value="both"
        )
        self.first = SpinBox(label="from slice (-1: auto)", min=-1, max=10_000_000, value=-1)
        self.last = SpinBox(label="to slice (-1: end)", min=-1, max=10_000_000, value=-1)
        self.outline = WindowOutline(self)
        self.ahead = CheckBox(label="embed the neighbouring slices ahead", value=True)
        self.ahead.tooltip = (
            "In the background, so that a click on the next (or previous) slice is fast"
        )
        self._ahead_token = 0  # counts slider moves: a move cancels the previous one's work
        self._ahead_workers: set = set()
        self.follow = CheckBox(label="follow the propagation", value=False)
        self.follow.tooltip = "Move the slider to each slice as it is written"
        self.propagate_button = PushButton(text="Propagate")
        self.propagate_button.tooltip = _tip("Track every object through the stack", "propagate")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.cancel_button.tooltip = _tip("Stop after the slice in progress", "cancel")
        self.cancel_everything = PushButton(text="Cancel", enabled=False)
        self.cancel_everything.tooltip = _tip(
            "Stop segment everything after the batch of clicks in progress", "cancel"
        )
        self.cancel_buttons = {
            "Start": self.cancel_download,
            "Segment": self.cancel_button,
            "Many objects": self.cancel_everything,
        }
        self.trainer = TrainTab(self)
        self.cancel_buttons["Train"] = self.trainer.cancel
        many = list(self.objects.widgets)
        many.insert(many.index(self.objects.segment_all) + 1, self.cancel_everything)
        self.session_folder = FileEdit(label="session folder", mode="d", value="")
        self.save_button = PushButton(text="Save session")
        self.load_button = PushButton(text="Load session")
        self.exporter = LabelExport(self)
        self.lineage = LineageTools(self)
        # Six tabs, so that the dock fits a laptop screen; the progress bar and the status
        # line stay in view below them.
        self.tabs = QTabWidget()
        self.pages = {}
        for title, widgets in (
            (
                "Start",
                [self.image, self.model_name, self.checkpoint, self.device, self.input_size,
                 self.precision, self.compile, self.embeddings, self.stack_axis,
                 self.new_labels, self.start_button, self.cancel_download],
            ),
            (
                "Segment",
                [self.obj_id, self.new_object, self.negative, self.undo, self.undo_button,
                 self.redo_button, self.outline.show, self.ahead, self.object_list,
                 self.direction, self.first, self.last, self.follow,
                 *self.lineage.options_widgets, self.propagate_button, self.cancel_button],
            ),
            ("Many objects", many),
            ("Lineage", self.lineage.widgets),
            ("Train", self.trainer.widgets),
            (
                "Session",
                [self.session_folder, self.save_button, self.load_button, *self.exporter.widgets],
            ),
        ):  # fmt: skip
            page = Container(labels=True)
            page.extend([w for w in widgets if not isinstance(w, QWidget)])
            for i, w in enumerate(widgets):  # Qt widgets (the object list) in their place
                if isinstance(w, QWidget):
                    after = next(x for x in widgets[i + 1 :] if not isinstance(x, QWidget))
                    row = after.native
                    while row.parent() is not page.native:
                        row = row.parent()
                    page.native.layout().insertWidget(page.native.layout().indexOf(row), w)
            _keep_narrow(page)
            self.pages[title] = page
            self.tabs.addTab(page.native, title)
        self.extend([self.feedback.bar, self.status])
        self.native.layout().insertWidget(0, self.tabs)
        self.native.setMinimumWidth(360)
        self.start_button.changed.connect(self.start)
        self.new_object.changed.connect(self.next_object)
        self.obj_id.changed.connect(self._update_defaults)
        self.negative.changed.connect(self._update_defaults)
        self.undo.changed.connect(self.undo_last_click)
        self.undo_button.changed.connect(self.undo_step)
        self.redo_button.changed.connect(self.redo_step)
        self.propagate_button.changed.connect(self.propagate)
        self.cancel_button.changed.connect(self.cancel)
        self.cancel_everything.changed.connect(self.cancel)
        self.cancel_download.changed.connect(self.cancel)
        self.stack_axis.changed.connect(self._on_axis_choice)
        self.save_button.changed.connect(self.save_session)
        self.load_button.changed.connect(self.load_session)
        self.image.changed.connect(self._on_image_choice)
        self._viewer_events = [
            (viewer.layers.events.inserted, self._on_layers_changed),
            (viewer.layers.events.removed, self._on_layer_removed),
            (viewer.dims.events.current_step, self._on_slider),
        ]
        for event, handler in self._viewer_events:
            event.connect(handler)
        self._keys = shortcuts.bind(viewer, self)
        # Closing the dock unparents this widget (napari keeps it); closing napari deletes it.
        self._watcher = _CloseWatcher(self._on_closed)
        self.native.installEventFilter(self._watcher)
        self.native.destroyed.connect(self._on_closed)
        self._set_session_enabled(False)
        self._on_image_choice()

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
        shape = full_resolution(layer).shape
        offset = self.viewer.dims.ndim - layer.ndim
        labels = self.viewer.dims.axis_labels
        choices = []
        for i in range(n):
            label = str(labels[offset + i])
            named = label.lstrip("-").isdigit()  # napari's default labels are numbers
            name = f"axis {i}" if named else f"{label} · axis {i}"
            choices.append((f"{name} ({shape[i]} slices)", i))
        return choices

    def _on_image_choice(self, *_) -> None:
        self.stack_axis.reset_choices()
        image = self.image.value
        if self.session is not None and image is not self.image_layer:
            self.end_session(
                f"The image changed to '{getattr(image, 'name', None)}': the session "
                "of the previous one ended. Press Start to segment this one."
            )
            return
        if self.session is None and image is not None and self._sam2_layers(image):
            self.feedback.say(
                f"'{image.name}' has SAM2 layers: Start resumes from them (tick 'start afresh' "
                "for new ones)."
            )

    def _on_axis_choice(self, *_) -> None:
        """Another *track along* axis mid-session applies only from the next Start: say so."""
        axis = self.stack_axis.value
        if self.session is None or self.image.value is not self.image_layer:
            return
        tracked = self.geometry.stack_axis
        if axis is None or axis < 0 or tracked is None or axis == tracked:
            return
        self.feedback.error(
            f"This session tracks along axis {tracked}; 'track along' axis {axis} applies "
            "when you press Start again, which ends this session (save it first: Session tab)."
        )

    def _on_layers_changed(self, *_) -> None:
        self.image.reset_choices()
        self.objects.source.reset_choices()
        self.trainer.reset_choices()

    def _on_layer_removed(self, event) -> None:
        self._on_layers_changed()
        if self.session is not None and event.value is self.image_layer:
            self.end_session(
                f"The image '{event.value.name}' was removed: the session ended (its SAM2 "
                "layers stay)."
            )
        elif self.session is not None and event.value in (
            self.points,
            self.boxes,
            self.labels_layer,
        ):
            self.end_session(
                f"The layer '{event.value.name}' was removed: the session ended. Press Start to "
                "continue with new layers."
            )

    def _on_closed(self, *_) -> None:
        """The dock was closed (or napari): stop workers, end the session, let go of the
        viewer and its layers (a widget opened later resumes from the SAM2 layers)."""
        if self.runner.closed:
            return
        self.runner.shutdown()
        try:
            self.end_session(None)
        except RuntimeError:  # napari is closing: the Qt side of this widget is gone already
            if self.session is not None:
                self.session.close()
            self.session = None
        for event, handler in self._viewer_events:
            try:
                event.disconnect(handler)
            except (TypeError, ValueError, RuntimeError):
                pass
        shortcuts.unbind(self.viewer, self._keys)

    # ------------------------------------------------------------------ helpers
    def _set_session_enabled(self, on: bool) -> None:
        for w in (
            self.new_object,
            self.undo,
            self.undo_button,
            self.redo_button,
            self.propagate_button,
            self.save_button,
            self.exporter.button,
        ):
            w.enabled = on
        self.objects.set_enabled(on)
        self.lineage.set_enabled(on)
        self.trainer.set_enabled(on)

    def run(self, fn, *args, yielded=None, returned=None, finished=None, quiet=False):
        return self.runner.run(
            fn, *args, yielded=yielded, returned=returned, finished=finished, quiet=quiet
        )

    _run = run  # (kept for the many-objects tools)

    @property
    def worker(self):
        """The most recent worker (tests wait on it)."""
        return self.runner.last

    @property
    def busy(self) -> bool:
        """Whether any background work (embedding, segmenting, propagating) is running."""
        return self.runner.busy

    def show_problem(self, message: str) -> None:
        """A mistake of the user's: the status line and a notification."""
        self.feedback.error(message)

    def _on_error(self, error: BaseException) -> None:
        # (a long task's progress ends when its worker finishes, which follows its error: an
        # error of another worker, a click's, say, leaves the task running)
        self.feedback.error(error)
