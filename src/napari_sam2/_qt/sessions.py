"""The widget's sessions: saving one to a folder and loading it back, and resuming from the
SAM2 layers an image already has (after the dock was closed, say). The folder format is
:mod:`napari_sam2.io.session_folder`. A part of :class:`~napari_sam2._qt.widget.SAM2Widget`."""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels

from .. import weights
from ..engine.stack import StackGeometry
from ..io import session_folder
from . import labels_data, session_io
from . import layers as L
from .feedback import EXPECTED_ERRORS
from .prompting import META
from .starting import CancelledLoad


class SessionMixin:
    _loading_session = False  # a load is adopting the image's SAM2 layers: not resumed from

    def save_session(self, *_) -> None:
        """Save the session in the chosen folder (slices hashed and files written in a
        worker)."""
        folder = self.session_folder.value
        if self.session is None or folder in (None, "") or str(folder) in ("", "."):
            self.feedback.error("Start a session and choose a session folder to save it in.")
            return
        if self.propagating:
            self.feedback.error("Wait for the propagation to finish (or Cancel it), then save.")
            return
        arguments = session_io.save_arguments(self)
        self.feedback.say(f"Saving the session in {folder}…")
        self.run(
            lambda: session_folder.write(folder, **arguments),
            returned=lambda path: self.feedback.done(f"Session saved in {path}."),
        )

    def load_session(self, *_) -> None:
        """Resume a saved session on the chosen image: the folder and the image are checked
        whole (every field, every labels slice, every image slice) and the model is loaded in a
        worker; only then are the image's SAM2 layers (or new ones) given the saved labels,
        prompts and names — all of it, or nothing."""
        folder = self.session_folder.value
        if folder in (None, "") or str(folder) in ("", "."):
            self.feedback.error("Choose the folder of a saved session.")
            return
        image = self.image.value
        if image is None:
            self.feedback.error("Open the session's image first, then load the session.")
            return
        try:
            saved = session_folder.read(folder)
            data = session_io.full_resolution(image)
            session_folder.check_image(saved, data.shape, bool(image.rgb))
            self._geometry_for(image)  # the view must show slices (Y, X in 2-D)
            checkpoint = session_io.checkpoint_to_load(saved, self.checkpoint.value)
        except EXPECTED_ERRORS as e:
            self.feedback.error(e)
            return
        model = saved.model
        key = (model.name, model.input_size, model.precision, model.compile, str(checkpoint))
        key = (*key, self.device.value)
        frames = saved.geometry.frames(data)
        progress = self.download_progress(model.name)

        def prepare():
            session_folder.check_labels(saved)
            session_folder.check_image(saved, data.shape, bool(image.rgb), frames)
            try:
                return self._load_model(key, checkpoint, progress)
            except weights.DownloadCancelled:
                return CancelledLoad()

        self.feedback.say(f"Checking the session in {folder} and loading {model.name}…")
        self.run(
            prepare,
            returned=lambda m: self._load_checked(saved, image, key, checkpoint, m),
            finished=self._download_finished,
        )

    def _load_checked(self, saved, image, key, checkpoint, model) -> None:
        """The folder and the image are good and the model is loaded: start on them."""
        if isinstance(model, CancelledLoad):
            self._say_cancelled("Load session")
            return
        if image is not self.image.value or image not in self.viewer.layers:
            self.feedback.error(f"'{image.name}' is no longer chosen: nothing was loaded.")
            return
        adopted = None if self.new_labels.value else self._sam2_layers(image, saved.geometry)
        dtype = adopted["labels"].data.dtype if adopted and "labels" in adopted else np.uint16
        if np.iinfo(dtype).max < saved.max_id:
            self.feedback.error(
                f"The session has object id {saved.max_id}, more than the SAM2 labels layer of "
                f"'{image.name}' ({dtype}) holds: tick 'start afresh' and load again."
            )
            return
        new_labels = self.new_labels.value
        self._loading_session, self._after_begin = True, lambda: self._restore(saved)
        try:
            self._begin(image, saved.geometry, model, key)
        finally:
            self._loading_session, self._after_begin = False, None
            self.new_labels.value = new_labels
        if self.session is None:  # _begin said why
            return
        m = saved.model
        self.model_name.value = m.name
        if m.input_size in self.input_size.choices:
            self.input_size.value = m.input_size
        self.precision.value, self.compile.value = m.precision, m.compile
        if checkpoint is not None:
            self.checkpoint.value = checkpoint
        self._show_slices(saved.geometry)

    def _restore(self, saved) -> None:
        """Replace the content of the session's SAM2 layers with the saved session."""
        self._loading_session = False  # from here on, the layers hold the saved prompts
        view, stored = self.label_view(), self.geometry.label_frames(saved.labels)
        for t in range(self.geometry.num_frames):
            frame = np.asarray(stored[t]) if t in saved.labelled_frames else 0
            view[t] = frame
        self.labels_layer.refresh()
        self.labels_layer.metadata.setdefault(META, {})["mask_prompts"] = {
            str(k): v for k, v in saved.mask_prompts.items()
        }
        self.names = dict(saved.names)
        self.lineage.restore(saved.lineage_edits)
        # The clicks and boxes replaced without a sync per change: the layers assign object ids
        # after adding, so a sync on the way would see every click as the current object's.
        layers = (self.points, self.boxes)
        for layer in layers:
            layer.events.data.disconnect(self._on_prompts_changed)
        try:
            for layer in layers:
                if len(layer.data):
                    layer.selected_data = set(range(len(layer.data)))
                    layer.remove_selected()
            L.add_prompts(self.points, self.boxes, self.image_layer, self.geometry, saved.prompts)
        finally:
            for layer in layers:
                layer.events.data.connect(self._on_prompts_changed)
        message = (
            f"Session resumed from {saved.folder}: {len(saved.obj_ids)} objects, "
            f"{sum(len(p.points) + (p.box is not None) for p in saved.prompts)} prompts, "
            f"labels on {len(saved.labelled_frames)} slices."
        )
        if saved.slice_hashes is None:
            message += " (Saved by an older version: the image's pixels could not be checked.)"
        self._ready_note = message if saved.prompts else None  # the prompts' sync says it
        self._resume({})
        self.refresh_objects()
        self.feedback.done(message)

    def _show_slices(self, geometry) -> None:
        """Choose the session's axis and move the sliders of the fixed axes to its slices."""
        if geometry.stack_axis is not None:
            self.stack_axis.value = geometry.stack_axis
        if not geometry.fixed:
            return
        image = self.image_layer
        position = list(image.world_to_data(self.viewer.dims.point))
        for axis, index in geometry.fixed.items():
            position[axis] = index
        world = image.data_to_world(position)
        offset = self.viewer.dims.ndim - image.ndim
        for axis in geometry.fixed:
            self.viewer.dims.set_point(offset + axis, world[axis])

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
        """Prompts and mask prompts of adopted layers become the new session's prompts (not
        while a saved session is being loaded into them: it replaces their content)."""
        if self._loading_session:
            return
        meta = self.labels_layer.metadata.get(META, {})
        view = self.label_view()
        for frame, ids in meta.get("mask_prompts", {}).items():
            frame = int(frame)
            self.run(
                self.session.add_label_prompts,
                frame,
                np.asarray(view[frame]),
                ids,
                finished=self.refresh_objects,
            )
        self._labelled = labels_data.ids_per_frame(self.labels_layer.data, self.geometry)
        if len(self.points.data) or len(self.boxes.data):
            self._on_prompts_changed()
