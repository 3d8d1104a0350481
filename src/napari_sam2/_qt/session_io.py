"""Saving a widget session to a folder and resuming it (the next day, on another machine, or
from the command line):

    session.json   the image's identity (shape, dtype, a hash of its pixels, the tracked axis),
                   the model and input size, object names, which slices have mask prompts
    prompts.csv    every click and box, in the CSV layout ``napari-sam2 segment`` reads
    labels.zarr    the SAM2 labels (the tracked slices)

The folder is written under temporary names and renamed when complete, so a failed save never
leaves half a session where a good one was.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine.embeddings import data_signature
from ..io import ObjectPrompt, read_prompts, write_prompts

FORMAT = "napari-sam2 session 1"


class SessionError(ValueError):
    """A session folder that cannot be read, or was saved for another image."""


@dataclass
class SavedSession:
    info: dict
    prompts: list[ObjectPrompt]
    labels: object  # the zarr array of the saved SAM2 labels

    @property
    def mask_prompts(self) -> dict[int, list[int]]:
        return {int(k): v for k, v in self.info.get("mask_prompts", {}).items()}

    @property
    def names(self) -> dict[int, str]:
        return {int(k): v for k, v in self.info.get("names", {}).items()}


def save(widget, folder: str | Path) -> Path:
    """Write the widget's session into ``folder`` (made if missing; files in it replaced)."""
    import zarr

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    geometry, session = widget.geometry, widget.session
    prompts = widget.prompt_rows()
    mask_prompts = {
        str(frame): sorted(session.mask_prompted(frame))
        for frame in range(geometry.num_frames)
        if session.mask_prompted(frame)
    }
    info = {
        "format": FORMAT,
        "image": {
            "name": widget.image_layer.name,
            "signature": data_signature(session.tracker.source),
            "shape": list(geometry.shape),
            "rgb": geometry.rgb,
            "stack_axis": geometry.stack_axis,
            "fixed": {str(k): v for k, v in geometry.fixed.items()},
        },
        "model": widget.model_settings(),
        "names": {str(k): v for k, v in widget.names.items()},
        "mask_prompts": mask_prompts,
        "command_line": "napari-sam2 segment IMAGE --prompts prompts.csv -o labels.tif"
        + _axis_options(geometry),
    }
    tmp = folder / ".saving"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_prompts(tmp / "prompts.csv", prompts)
        data = widget.labels_layer.data
        out = zarr.create_array(
            store=str(tmp / "labels.zarr"),
            shape=tuple(data.shape),
            chunks=(1,) * (data.ndim - 2) + tuple(data.shape[-2:]),
            dtype=data.dtype,
            fill_value=0,
        )
        source, target = geometry.label_frames(data), geometry.label_frames(out)
        for t in range(geometry.num_frames):
            frame = np.asarray(source[t])
            if frame.any():
                target[t] = frame
        (tmp / "session.json").write_text(json.dumps(info, indent=2))
        for name in ("prompts.csv", "labels.zarr", "session.json"):
            old = folder / name
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
            (tmp / name).rename(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def read(folder: str | Path) -> SavedSession:
    """A saved session (its prompts checked as the command line checks them)."""
    import zarr

    folder = Path(folder)
    try:
        info = json.loads((folder / "session.json").read_text())
    except (OSError, ValueError) as e:
        raise SessionError(f"{folder} holds no saved session (session.json: {e})") from e
    if info.get("format") != FORMAT:
        raise SessionError(f"{folder / 'session.json'} is not a napari-sam2 session")
    prompts = []
    if (folder / "prompts.csv").stat().st_size > 0 and _has_rows(folder / "prompts.csv"):
        prompts = read_prompts(folder / "prompts.csv")
    labels = zarr.open_array(str(folder / "labels.zarr"), mode="r")
    return SavedSession(info, prompts, labels)


def check_image(saved: SavedSession, geometry, source) -> None:
    """Refuse a session saved for another image (or another axis of it)."""
    image = saved.info["image"]
    if list(geometry.shape) != image["shape"]:
        raise SessionError(
            f"the session was saved for an image of shape {tuple(image['shape'])} "
            f"('{image['name']}'), not {tuple(geometry.shape)}"
        )
    fixed = {str(k): v for k, v in geometry.fixed.items()}
    if geometry.stack_axis != image["stack_axis"] or fixed != image["fixed"]:
        raise SessionError(
            f"the session tracked axis {image['stack_axis']} at {image['fixed']}; choose the "
            "same 'track along' axis and slider position, then load it again"
        )
    if data_signature(source) != image["signature"]:
        raise SessionError(
            f"the session was saved for other pixels ('{image['name']}'): this image has the "
            "same shape but different content"
        )


def _has_rows(path: Path) -> bool:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return len(lines) > 1


def _axis_options(geometry) -> str:
    if len(geometry.fixed) == 1:
        ((other, index),) = geometry.fixed.items()
        return f" --axis {geometry.stack_axis} --index {index}"
    return ""
