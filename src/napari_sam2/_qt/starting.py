"""The widget's start: the model loaded in the background (once per settings), the stack's
geometry read from the view, the tracking session opened and the SAM2 layers made (or resumed),
and the session ended. A part of :class:`~napari_sam2._qt.widget.SAM2Widget`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.layers import Image
from qtpy.QtCore import QObject, Signal

from .. import weights
from ..engine.session import PromptSession
from ..engine.stack import StackError, StackGeometry
from . import labels_data
from . import layers as L
from .feedback import EXPECTED_ERRORS
from .prompting import META

POINTS_NAME, BOXES_NAME, LABELS_NAME = "SAM2 clicks", "SAM2 boxes", "SAM2 labels"
EMBEDDING_CACHE = 8  # slices whose image embedding is kept in RAM (LRU); all go to disk
TILES = "auto"  # clicks on slices larger than 1.5x the model's input: native-resolution windows


def full_resolution(image: Image):
    """The array SAM 2 reads: a multiscale image's finest level, else the data itself."""
    return image.data[0] if image.multiscale else image.data


DOWNLOADING = "downloading the model"  # the long task of a download (one at a time)
_KIB = 1024  # the progress bar counts KiB (a Qt progress bar's range is a 32-bit int)


class _Download(QObject):
    """A checkpoint download seen from the widget: progress from the loading worker's thread
    (a queued signal: Qt runs the slot on the widget's thread), and Cancel the other way."""

    changed = Signal(int, int)  # bytes done, bytes in all (0: unknown)

    def __init__(self) -> None:
        super().__init__()
        self.cancelled = False
        self.filename = ""


class CancelledLoad:
    """What a load stopped by Cancel returns (nothing to start on, or to load)."""


class StartMixin:
    def _init_start(self) -> None:
        self._download = _Download()
        self._download.changed.connect(self._on_download)

    def start(self, *_) -> None:
        """Load the model (in the background) and set up (or resume) the SAM2 layers."""
        image = self.image.value
        if image is None:
            self.feedback.error("Open an image first (File → Open Sample → SAM 2 has examples).")
            return
        try:
            geometry = self._geometry_for(image)
        except StackError as e:
            self.feedback.error(e)
            return
        checkpoint = self.checkpoint.value
        checkpoint = None if checkpoint in (None, "") or Path(checkpoint).is_dir() else checkpoint
        key = (*self.model_settings().values(), str(checkpoint), self.device.value)
        self.feedback.say(f"Loading {self.model_name.value}…")
        frames, store = geometry.frames(full_resolution(image)), self._store_choice()
        progress = self.download_progress(key[0])

        def load():
            try:
                model = self._load_model(key, checkpoint, progress)
            except weights.DownloadCancelled:
                return CancelledLoad()
            # the tracker too: it reads slices for the intensity window
            return self._open_session(model, frames, store)

        self.run(
            load,
            returned=lambda session: self._loaded(image, geometry, key, session),
            finished=self._download_finished,
        )

    def _loaded(self, image, geometry, key, session) -> None:
        if isinstance(session, CancelledLoad):
            self._say_cancelled("Start")
            return
        self._begin(image, geometry, session.tracker.model, key, session)

    def _say_cancelled(self, button: str) -> None:
        """A download stopped by Cancel (the weights cache keeps no part of it): said plainly,
        not as an error; ``button`` is what downloads it again."""
        self.feedback.done(
            f"Download of {self._download.filename} cancelled; nothing was kept. Press "
            f"{button} to download it again (or choose a checkpoint file)."
        )

    # ------------------------------------------------------------------ downloads
    def download_progress(self, name: str):
        """The progress hook of a model load: a download (a checkpoint not in the cache yet)
        shows on the widget's progress bar and status line, and the Start tab's Cancel (or H)
        stops it."""
        try:
            self._download.filename = weights.get_weights(name).filename
        except ValueError:  # an unknown name: the load itself says so
            self._download.filename = name
        self._download.cancelled = False
        return weights.progress_callback(
            self._download.changed.emit, lambda: self._download.cancelled or self.runner.closed
        )

    def _on_download(self, done: int, total: int) -> None:
        if self.runner.closed:
            return
        name = self._download.filename
        of = f" of {total / 2**20:,.0f}" if total else ""
        text = f"Downloading {name}: {done / 2**20:,.0f}{of} MiB (once; Cancel stops it)…"
        if self._task != DOWNLOADING:
            if self._task is not None or self._download.cancelled:
                self.feedback.say(text)  # another task has the bar, or the download stops
                return
            self.start_progress(
                max(1, total // _KIB), DOWNLOADING, cancel=self._cancel_download, tab="Start"
            )
        bar = self.feedback.bar
        bar.value = min(bar.max, done // _KIB) if total else 0
        self.feedback.say(text)

    def _cancel_download(self) -> None:
        self._download.cancelled = True

    def _download_finished(self) -> None:
        if self._task == DOWNLOADING:
            self.end_progress()

    def model_settings(self) -> dict:
        """The model of the session running (else the one chosen): name, input size, precision."""
        model = self.session.tracker.model if self.session is not None else None
        if model is not None:
            return {
                "name": model.config.name,
                "input_size": int(model.config.image_size),
                "precision": model.precision,
                "compile": bool(model.compiled),
            }
        return {
            "name": self.model_name.value,
            "input_size": int(self.input_size.value),
            "precision": self.precision.value,
            "compile": bool(self.compile.value),
        }

    def use_model(self, model, image: Image | None = None) -> None:
        """Start with an already loaded model (scripts and tests); synchronous."""
        image = image or self.image.value
        self._begin(image, self._geometry_for(image), model, ("given",))

    def _load_model(self, key, checkpoint, progress=True):
        """The model of ``key`` (loaded once per settings); ``progress``: a download's progress
        hook (see :func:`napari_sam2.weights.fetch`)."""
        if key not in self._models:
            import napari_sam2 as ns

            name, size, precision, compile_, _, device = key
            self._models[key] = ns.load_model(
                name,
                checkpoint=checkpoint,
                device=None if device == "auto" else device,
                image_size=int(size),
                precision=precision,
                compile=compile_,
                progress=progress,
            )
        return self._models[key]

    def _geometry_for(self, image: Image) -> StackGeometry:
        shape = tuple(full_resolution(image).shape)
        lead = image.ndim - 2
        displayed = tuple(self.viewer.dims.displayed[-2:]) if self.viewer.dims.ndisplay == 2 else ()
        offset = self.viewer.dims.ndim - image.ndim
        if displayed and tuple(d - offset for d in displayed) != (image.ndim - 2, image.ndim - 1):
            raise StackError("Show the last two axes (Y, X) in 2-D view to segment slices.")
        if lead <= 0:
            return StackGeometry(shape, bool(image.rgb))
        axis = self.stack_axis.value
        axis = 0 if axis is None or axis < 0 else int(axis)
        position = np.round(image.world_to_data(self.viewer.dims.point)).astype(int)
        fixed = {a: int(np.clip(position[a], 0, shape[a] - 1)) for a in range(lead) if a != axis}
        return StackGeometry(shape, bool(image.rgb), axis, fixed)

    def _store_choice(self) -> str | None:
        store = self.embeddings.value
        return None if store in (None, "") or str(store) in ("", ".") else str(store)

    @staticmethod
    def _open_session(model, frames, store) -> PromptSession:
        return PromptSession(
            model, frames, tiles=TILES, feature_cache=EMBEDDING_CACHE, embeddings=store
        )

    def _begin(self, image: Image, geometry: StackGeometry, model, key, session=None) -> None:
        self.end_session(None)
        resume = None if self.new_labels.value else self._sam2_layers(image, geometry)
        try:
            if session is None:
                frames = geometry.frames(full_resolution(image))
                session = self._open_session(model, frames, self._store_choice())
            if not (resume and "labels" in resume):
                self.labels_data = labels_data.allocate(geometry)
        except EXPECTED_ERRORS as e:  # a store made for another image; no memory for labels
            self.feedback.error(e)
            return session.close() if session is not None else None
        self.session, self.image_layer, self.geometry = session, image, geometry
        common = {
            "scale": image.scale[: geometry.ndim_spatial],
            "translate": image.translate[: geometry.ndim_spatial],
        }
        self._make_layers(image, geometry, common, resume or {})
        self._update_defaults()
        self.points.mode = "add"
        self.viewer.layers.selection.active = self.points
        self._set_session_enabled(True)
        self._enable_task_buttons()
        self.direction.enabled = self.first.enabled = self.last.enabled = geometry.num_frames > 1
        what = f"{key[0]} ready · {geometry.num_frames} slice(s)"
        if session.tiled:
            h, w = geometry.spatial_shape
            what += (
                f" · tiles on: clicks on these {h}×{w} slices are answered, and objects "
                f"followed, at full resolution in {session.windows.tile}-pixel windows"
            )
        if resume:
            what += f" · resumed from the SAM2 layers of '{image.name}'"
        message = f"{what}. Click on an object (object {self.obj_id.value})."
        if resume:
            self._ready_note = message  # said again once the layers' prompts are synced
            self._resume(resume)
        self.feedback.done(message)
        self.tabs.setCurrentWidget(self.pages["Segment"].native)
        self.refresh_objects()
        if self._after_begin is not None:
            after, self._after_begin = self._after_begin, None
            after()
        self._start_history()
        self._on_slider()

    def _make_layers(self, image, geometry, common, resume: dict) -> None:
        ndim = geometry.ndim_spatial
        tag = {"image": image.name}
        if "labels" in resume:
            self.labels_layer = resume["labels"]
        else:
            name = LABELS_NAME if LABELS_NAME not in self.viewer.layers else None
            self.labels_layer = self.viewer.add_labels(
                self.labels_data.array,
                name=name or f"{LABELS_NAME} {len(self.viewer.layers)}",
                metadata={META: {**tag, "role": "labels", "mask_prompts": {}}},
                **common,
            )
        self.labels_layer.events.paint.connect(self.objects.on_paint)
        self.labels_layer.events.paint.connect(self.note_prompt_change)
        self.objects.source.reset_choices()
        size = max(6.0, round(min(geometry.spatial_shape) / 80))  # visible on large images
        if "clicks" in resume:
            self.points = resume["clicks"]
        else:
            self.points = self.viewer.add_points(
                np.zeros((0, ndim)),
                ndim=ndim,
                name=POINTS_NAME,
                size=size,
                metadata={META: {**tag, "role": "clicks"}},
                features={L.OBJ_ID: np.zeros(0, int), L.POSITIVE: np.zeros(0, bool)},
                **common,
            )
        self.points.events.data.connect(self._on_prompts_changed)
        self.points.events.data.connect(self.note_prompt_change)
        # Before napari's own add-point handler: Shift makes this click negative.
        self.points.mouse_drag_callbacks.insert(0, self._polarity_from_modifiers)
        if "boxes" in resume:
            self.boxes = resume["boxes"]
        else:
            self.boxes = self.viewer.add_shapes(
                ndim=ndim,
                name=BOXES_NAME,
                edge_color="yellow",
                face_color="transparent",
                edge_width=max(2.0, size / 3),
                metadata={META: {**tag, "role": "boxes"}},
                features={L.OBJ_ID: np.zeros(0, int)},
                **common,
            )
        self.boxes.events.data.connect(self._on_prompts_changed)
        self.boxes.events.data.connect(self.note_prompt_change)
        self.outline.adopt(resume.get("window"))

    def end_session(self, message: str | None = "Pick an image and press Start.") -> None:
        """Stop background work and forget the tracker (the layers stay, and a later Start on
        the same image resumes from them)."""
        self.runner.stop_all()
        self._ahead_token += 1  # background embeddings stop before their next slice
        if self.session is not None:
            self.session.close()
        if self.labels_layer is not None:
            for handler in (self.objects.on_paint, self.note_prompt_change):
                try:
                    self.labels_layer.events.paint.disconnect(handler)
                except (TypeError, ValueError, RuntimeError):
                    pass
        self._stop_history()
        for layer in (self.points, self.boxes):
            if layer is not None:
                for handler in (self._on_prompts_changed, self.note_prompt_change):
                    try:
                        layer.events.data.disconnect(handler)
                    except (TypeError, ValueError, RuntimeError):
                        pass
                if self._polarity_from_modifiers in layer.mouse_drag_callbacks:
                    layer.mouse_drag_callbacks.remove(self._polarity_from_modifiers)
        self.session, self.image_layer = None, None
        self.points = self.boxes = None
        self.outline.forget()
        self._labelled = {}
        self._set_session_enabled(False)
        self.end_progress()
        if message:
            self.feedback.done(message)
        self.refresh_objects()
