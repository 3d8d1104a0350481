"""The widget's sessions: saving one to a folder and loading it back, and resuming from the
SAM2 layers an image already has (after the dock was closed, say). The folder format is
:mod:`.session_io`. A part of :class:`~napari_sam2._qt.widget.SAM2Widget`."""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels

from ..engine.stack import StackGeometry
from . import labels_data, session_io
from . import layers as L
from .feedback import EXPECTED_ERRORS
from .prompting import META


class SessionMixin:
    def save_session(self, *_) -> None:
        folder = self.session_folder.value
        if self.session is None or folder in (None, "") or str(folder) in ("", "."):
            self.feedback.error("Start a session and choose a session folder to save it in.")
            return
        try:
            session_io.save(self, folder)
        except EXPECTED_ERRORS as e:
            self.feedback.error(e)
            return
        self.feedback.done(f"Session saved in {folder}.")

    def load_session(self, *_) -> None:
        """Start on the chosen image with a saved session's model, labels, prompts and names."""
        folder = self.session_folder.value
        if folder in (None, "") or str(folder) in ("", "."):
            self.feedback.error("Choose the folder of a saved session.")
            return
        try:
            saved = session_io.read(folder)
        except EXPECTED_ERRORS as e:
            self.feedback.error(e)
            return
        model = saved.info["model"]
        self.model_name.value, self.input_size.value = model["name"], model["input_size"]
        self.precision.value, self.compile.value = model["precision"], model["compile"]
        axis = saved.info["image"]["stack_axis"]
        if axis is not None:
            self.stack_axis.value = axis
        self.new_labels.value = True  # the saved labels replace what the layers hold
        self._after_begin = lambda: self._restore(saved)
        self.start()

    def _restore(self, saved) -> None:
        try:
            session_io.check_image(saved, self.geometry, self.session.tracker.source)
        except EXPECTED_ERRORS as e:
            self.end_session(None)
            self.feedback.error(e)
            return
        view, stored = self.label_view(), self.geometry.label_frames(saved.labels)
        for t in range(self.geometry.num_frames):
            frame = np.asarray(stored[t])
            if frame.any():
                view[t] = frame
        self.labels_layer.refresh()
        self._labelled = labels_data.ids_per_frame(self.labels_layer.data, self.geometry)
        self.names = saved.names
        self.labels_layer.metadata[META]["mask_prompts"] = {
            str(k): v for k, v in saved.mask_prompts.items()
        }
        self._resume({})
        L.add_prompts(self.points, self.boxes, self.image_layer, self.geometry, saved.prompts)
        message = (
            f"Session resumed: {len(saved.prompts)} prompted objects and slices, labels of "
            f"{len(self._labelled)} slices."
        )
        self._ready_note = message if saved.prompts else None  # the prompts' sync says it
        self.feedback.done(message)

    def _sam2_layers(self, image: Image, geometry: StackGeometry | None = None) -> dict:
        """The SAM2 layers made for ``image`` earlier (a closed dock, a saved project)."""
        found = {}
        for layer in self.viewer.layers:
            meta = layer.metadata.get(META) if hasattr(layer, "metadata") else None
            if not meta or meta.get("image") != image.name:
                continue
            if geometry is not None and layer.ndim != geometry.ndim_spatial:
                continue
            if isinstance(layer, Labels) and geometry is not None:
                if tuple(layer.data.shape) != tuple(geometry.labels_shape):
                    continue
            found.setdefault(meta.get("role"), layer)
        return found

    def _resume(self, resume: dict) -> None:
        """Prompts and mask prompts of adopted layers become the new session's prompts."""
        meta = self.labels_layer.metadata.get(META, {})
        view = self.label_view()
        for frame, ids in meta.get("mask_prompts", {}).items():
            frame = int(frame)
            self.run(self.session.add_label_prompts, frame, np.asarray(view[frame]), ids)
        self._labelled = labels_data.ids_per_frame(self.labels_layer.data, self.geometry)
        if len(self.points.data) or len(self.boxes.data):
            self._on_prompts_changed()
