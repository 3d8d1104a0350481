"""Between the widget and a session folder (:mod:`napari_sam2.io.session_folder`, which says
what the folder holds): what a save takes from the widget, and which checkpoint a load uses."""

from __future__ import annotations

from pathlib import Path

from ..io.session_folder import SavedSession, SessionError, SessionModel


def full_resolution(image):
    """The array SAM 2 reads: a multiscale image's finest level, else the data itself."""
    return image.data[0] if image.multiscale else image.data


def session_model(widget) -> SessionModel:
    """The running session's model, with the checkpoint file it was loaded from (None: the
    official download, or a model handed to the widget by a script)."""
    settings = widget.model_settings()
    model = widget.session.tracker.model
    checkpoint = None
    for key, loaded in widget._models.items():
        if loaded is model and key[4] not in ("None", ""):
            checkpoint = str(Path(key[4]).resolve())
    return SessionModel(
        settings["name"],
        settings["input_size"],
        settings["precision"],
        settings["compile"],
        checkpoint,
    )


def save_arguments(widget) -> dict:
    """Everything :func:`~napari_sam2.io.session_folder.write` needs, read from the widget now
    (on the main thread); the slices are hashed and the files written later, in a worker."""
    geometry, session = widget.geometry, widget.session
    return {
        "image_name": widget.image_layer.name,
        "geometry": geometry,
        "frames": geometry.frames(full_resolution(widget.image_layer)),
        "model": session_model(widget),
        "names": {k: v for k, v in widget.names.items() if v},
        "mask_prompts": {
            frame: sorted(session.mask_prompted(frame))
            for frame in range(geometry.num_frames)
            if session.mask_prompted(frame)
        },
        "prompts": widget.prompt_rows(),
        "labels": widget.labels_layer.data,
        "lineage_edits": widget.lineage.saved_edits(),
    }


def checkpoint_to_load(saved: SavedSession, chosen) -> str | None:
    """The checkpoint a load uses: the session's file where it exists, else the one chosen in
    the widget; None: the official download (weights cache). A saved file that is missing,
    with none chosen, is refused with what to do."""
    chosen = None if chosen in (None, "") or Path(chosen).is_dir() else str(chosen)
    saved_file = saved.model.checkpoint
    if saved_file is not None and Path(saved_file).is_file():
        return saved_file
    if chosen is not None and Path(chosen).is_file():
        return chosen
    if saved_file is not None:
        raise SessionError(
            f"the session's model ({saved.model.name}) was loaded from {saved_file}, which is "
            "not on this machine: choose a copy of that file in Start → checkpoint (or put it "
            "back there), then load the session again"
        )
    return None
