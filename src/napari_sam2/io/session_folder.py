"""A saved annotation session: a folder that the widget resumes from (the next day, on another
machine) and that the command line reads (``napari-sam2 segment IMAGE --prompts prompts.csv``).

    session.json   the image (name, shape, the tracked axis and slider position, a hash of
                   every tracked slice), the model (name, input size, precision, checkpoint
                   file), object names, which slices have mask prompts, the lineage
                   corrections (``lineage_edits``, optional: older sessions have none)
    prompts.csv    every click and box, in the CSV layout ``napari-sam2 segment`` reads
    labels.zarr    the SAM2 labels, one chunk per tracked slice

:func:`write` writes under temporary names and renames when complete, so a failed save never
leaves half a session where a good one was. :func:`read` checks the whole folder (every field,
every prompt), :func:`check_labels` decodes every slice of the labels and :func:`check_image`
compares every tracked slice with the image: a session is refused with one message naming the
file and the field before anything is restored. Qt-free.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..engine.lineage_edits import edit_from_dict
from ..engine.prompts import MAX_OBJ_ID, Prompt, PromptError
from ..engine.session import BoxRow, PointRow, PromptSession
from ..engine.stack import StackError, StackGeometry
from ..model.config import MODEL_NAMES
from ..model.precision import PRECISIONS
from .errors import InputError
from .prompts_csv import ObjectPrompt, read_prompts, write_prompts

FORMAT = "napari-sam2 session 2"
OLD_FORMAT = "napari-sam2 session 1"  # hashed 8 slices only: its pixels cannot be checked
FILES = ("session.json", "prompts.csv", "labels.zarr")


class SessionError(InputError):
    """A session folder that cannot be used (damaged, incomplete, or saved for another image);
    the message names the file and the field."""


@dataclass(frozen=True)
class SessionModel:
    """The network a session was made with. ``checkpoint``: the file it was loaded from, or
    None for the official download (the weights cache)."""

    name: str
    input_size: int
    precision: str = "fp32"
    compile: bool = False
    checkpoint: str | None = None


@dataclass
class SavedSession:
    """A checked session folder. ``labels`` is the zarr array of ``labels.zarr`` (read lazily:
    :func:`check_labels` decodes it); ``slice_hashes`` is None for a session of the old format."""

    folder: Path
    image_name: str
    geometry: StackGeometry
    slice_hashes: list[str] | None
    model: SessionModel
    names: dict[int, str]
    mask_prompts: dict[int, list[int]]
    prompts: list[ObjectPrompt]
    labels: object
    max_id: int = 0  # the largest label id, known once check_labels has run
    labelled_frames: list[int] = field(default_factory=list)  # idem
    lineage_edits: list = field(default_factory=list)  # engine.lineage_edits, in order

    @property
    def obj_ids(self) -> list[int]:
        ids = {p.obj_id for p in self.prompts}
        ids |= {i for ids in self.mask_prompts.values() for i in ids}
        return sorted(ids)


# ------------------------------------------------------------------------------ hashing
def slice_hash(frame) -> str:
    """A hash of one slice's pixels (its shape and dtype included)."""
    frame = np.ascontiguousarray(np.asarray(frame))
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{frame.dtype.str}{frame.shape}".encode())
    digest.update(frame.view(np.uint8).reshape(-1).data)
    return digest.hexdigest()


def slice_hashes(frames, progress: Callable[[int, int], None] | None = None) -> list[str]:
    """The hash of every slice of ``frames`` (a (T, H, W[, C]) stack read one slice at a time,
    so lazy data are never loaded whole). ``progress(done, total)`` after each slice."""
    out = []
    for t in range(len(frames)):
        out.append(slice_hash(frames[t]))
        if progress is not None:
            progress(t + 1, len(frames))
    return out


# ------------------------------------------------------------------------------ writing
def write(
    folder: str | Path,
    *,
    image_name: str,
    geometry: StackGeometry,
    frames,
    model: SessionModel,
    names: dict[int, str],
    mask_prompts: dict[int, Sequence[int]],
    prompts: Sequence[ObjectPrompt],
    labels,
    lineage_edits: Sequence[dict] = (),
) -> Path:
    """Write a session into ``folder`` (made if missing; its session files replaced).
    ``frames``: the image's tracked slices (hashed); ``labels``: the SAM2 labels array."""
    import zarr

    folder = Path(folder)
    hashes = slice_hashes(frames)
    info = {
        "format": FORMAT,
        "image": {
            "name": image_name,
            "shape": list(geometry.shape),
            "rgb": bool(geometry.rgb),
            "stack_axis": geometry.stack_axis,
            "fixed": {str(k): int(v) for k, v in geometry.fixed.items()},
            "slice_hashes": hashes,
        },
        "model": {
            "name": model.name,
            "input_size": int(model.input_size),
            "precision": model.precision,
            "compile": bool(model.compile),
            "checkpoint": None if model.checkpoint is None else str(model.checkpoint),
        },
        "names": {str(k): str(v) for k, v in sorted(names.items())},
        "mask_prompts": {
            str(k): sorted(int(i) for i in v) for k, v in sorted(mask_prompts.items()) if v
        },
        "lineage_edits": [dict(e) for e in lineage_edits],
        "command_line": "napari-sam2 segment IMAGE --prompts prompts.csv -o labels.tif"
        + _axis_options(geometry),
    }
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".saving"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_prompts(tmp / "prompts.csv", prompts)
        out = zarr.create_array(
            store=str(tmp / "labels.zarr"),
            shape=tuple(labels.shape),
            chunks=(1,) * (labels.ndim - 2) + tuple(labels.shape[-2:]),
            dtype=labels.dtype,
            fill_value=0,
        )
        source, target = geometry.label_frames(labels), geometry.label_frames(out)
        for t in range(geometry.num_frames):
            frame = np.asarray(source[t])
            if frame.any():
                target[t] = frame
        (tmp / "session.json").write_text(json.dumps(info, indent=2))
        for name in FILES:
            old = folder / name
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
            (tmp / name).rename(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# ------------------------------------------------------------------------------ reading
def read(folder: str | Path) -> SavedSession:
    """The session saved in ``folder``, every field and prompt checked (the labels' pixels are
    decoded by :func:`check_labels`). Raises :class:`SessionError` naming file and field."""
    import zarr

    folder = Path(folder)
    if not folder.is_dir():
        raise SessionError(f"{folder} is not a folder; choose the folder of a saved session")
    missing = [name for name in FILES if not (folder / name).exists()]
    if "session.json" in missing:
        raise SessionError(f"{folder} holds no saved session: session.json is missing")
    path = folder / "session.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SessionError(f"{path} cannot be read: {e}") from e
    if not isinstance(info, dict):
        raise SessionError(f"{path} is not a napari-sam2 session (it holds a {_kind(info)})")
    if info.get("format") not in (FORMAT, OLD_FORMAT):
        raise SessionError(
            f"{path}: 'format' is {info.get('format')!r}, not {FORMAT!r}: not a napari-sam2 "
            "session (or one of a newer version)"
        )
    if missing:
        raise SessionError(
            f"the session in {folder} is incomplete: {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing"
        )
    fields = _Fields(path, info)
    image = fields.section("image")
    shape = fields.integers(image, "image.shape", minimum=1)
    rgb = fields.boolean(image, "image.rgb")
    axis = fields.get(image, "image.stack_axis")
    if axis is not None and not _is_int(axis):
        fields.fail("image.stack_axis", f"is {axis!r}, not an axis number")
    fixed_raw = fields.mapping(image, "image.fixed")
    fixed = {}
    for k, v in fixed_raw.items():
        if not (_int_text(k) and _is_int(v)):
            fields.fail("image.fixed", f"maps {k!r} to {v!r}: expected axis numbers to indices")
        fixed[int(k)] = int(v)
    try:
        geometry = StackGeometry(tuple(shape), rgb, axis, fixed)
    except StackError as e:
        fields.fail("image", f"does not describe a stack: {e}")
    hashes = None
    if info["format"] == FORMAT:
        hashes = fields.get(image, "image.slice_hashes")
        if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
            fields.fail("image.slice_hashes", "is not a list of hashes")
        if len(hashes) != geometry.num_frames:
            fields.fail(
                "image.slice_hashes",
                f"has {len(hashes)} hashes for {geometry.num_frames} tracked slices",
            )
    name = image.get("name", "")
    model = _model(fields)
    names = {}
    for k, v in fields.mapping(info, "names", required=False).items():
        if not _int_text(k) or not 1 <= int(k) <= MAX_OBJ_ID or not isinstance(v, str):
            fields.fail("names", f"maps {k!r} to {v!r}: expected object ids to names")
        names[int(k)] = v
    mask_prompts = {}
    for k, v in fields.mapping(info, "mask_prompts", required=False).items():
        if not _int_text(k) or not 0 <= int(k) < geometry.num_frames:
            fields.fail(
                "mask_prompts",
                f"names slice {k!r}: expected slice numbers 0 to {geometry.num_frames - 1}",
            )
        if not isinstance(v, list) or not all(_is_int(i) and 1 <= i <= MAX_OBJ_ID for i in v):
            fields.fail("mask_prompts", f"slice {k}: {v!r} is not a list of object ids")
        mask_prompts[int(k)] = [int(i) for i in v]
    edits = info.get("lineage_edits", [])  # absent from sessions saved before lineage
    if not isinstance(edits, list):
        fields.fail("lineage_edits", f"is a {_kind(edits)}, not a list of corrections")
    lineage_edits = []
    for n, item in enumerate(edits):
        try:
            lineage_edits.append(edit_from_dict(item))
        except ValueError as e:
            fields.fail("lineage_edits", f"item {n}: {e}")
    prompts = _prompts(folder / "prompts.csv", geometry)
    labels_path = folder / "labels.zarr"
    try:
        labels = zarr.open_array(str(labels_path), mode="r")
    except Exception as e:  # zarr raises many kinds for a damaged store
        raise SessionError(f"{labels_path} is not a readable zarr array ({e})") from e
    if tuple(labels.shape) != geometry.labels_shape:
        raise SessionError(
            f"{labels_path} has shape {tuple(labels.shape)}, but session.json's image needs "
            f"labels of shape {geometry.labels_shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise SessionError(f"{labels_path} holds {labels.dtype} values, not integer labels")
    saved = SavedSession(
        folder, str(name), geometry, hashes, model, names, mask_prompts, prompts, labels
    )
    saved.lineage_edits = lineage_edits
    return saved


def check_labels(saved: SavedSession, progress: Callable[[int, int], None] | None = None):
    """Decode every tracked slice of ``labels.zarr`` (a damaged chunk is found here, before
    anything is restored); records the largest id and the labelled slices."""
    view = saved.geometry.label_frames(saved.labels)
    saved.max_id, saved.labelled_frames = 0, []
    for t in range(saved.geometry.num_frames):
        try:
            frame = np.asarray(view[t])
        except Exception as e:  # a codec's error (e.g. Zstd), a truncated or missing chunk
            raise SessionError(
                f"{saved.folder / 'labels.zarr'} is damaged: slice {t} cannot be read "
                f"({type(e).__name__}: {e}). Save the session again from the widget, or "
                "restore the folder from a backup"
            ) from e
        if frame.any():
            saved.labelled_frames.append(t)
            saved.max_id = max(saved.max_id, int(frame.max()))
        if progress is not None:
            progress(t + 1, saved.geometry.num_frames)


def check_image(
    saved: SavedSession,
    shape: Sequence[int],
    rgb: bool,
    frames=None,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Refuse an image other than the one the session was saved for: its ``shape`` and, when
    ``frames`` (its tracked slices) are given, the pixels of every slice."""
    expected = saved.geometry
    if tuple(shape) != tuple(expected.shape) or bool(rgb) != bool(expected.rgb):
        kind = " RGB" if expected.rgb else ""
        raise SessionError(
            f"the session was saved for a{kind} image of shape {tuple(expected.shape)} "
            f"('{saved.image_name}'), not for this one of shape {tuple(shape)}; choose that "
            "image and load again"
        )
    if frames is None or saved.slice_hashes is None:
        return
    for t in range(len(frames)):
        if slice_hash(frames[t]) != saved.slice_hashes[t]:
            raise SessionError(
                f"the session was saved for other pixels ('{saved.image_name}'): slice {t} of "
                "this image differs from the saved one (same shape, edited or another file)"
            )
        if progress is not None:
            progress(t + 1, len(frames))


def prompt_rows(prompts: Sequence[ObjectPrompt]) -> tuple[list[PointRow], list[BoxRow]]:
    """Saved prompts as the rows a :class:`PromptSession` syncs, each with its own object."""
    points = [
        PointRow(p.obj_id, p.frame, float(r), float(c), bool(label))
        for p in prompts
        for (r, c), label in zip(p.points, p.labels)
    ]
    boxes = [BoxRow(p.obj_id, p.frame, tuple(map(float, p.box))) for p in prompts if p.box]
    return points, boxes


def restore(session: PromptSession, saved: SavedSession) -> None:
    """Give ``session`` (on the saved image) the saved prompts: the mask prompts, from the saved
    labels, then every click and box (headless resumption; the widget goes through its
    layers)."""
    view = saved.geometry.label_frames(saved.labels)
    for frame, ids in sorted(saved.mask_prompts.items()):
        session.add_label_prompts(frame, np.asarray(view[frame]), ids)
    points, boxes = prompt_rows(saved.prompts)
    for frame in sorted({p.frame for p in saved.prompts}):
        errors = session.sync_frame(frame, points, boxes).errors
        if errors:
            obj_id, message = errors[0]
            raise SessionError(f"{saved.folder / 'prompts.csv'}: object {obj_id}: {message}")


# ------------------------------------------------------------------------------ details
class _Fields:
    """Reads fields of session.json; a bad one raises SessionError naming it."""

    def __init__(self, path: Path, info: dict) -> None:
        self.path, self.info = path, info

    def fail(self, name: str, problem: str):
        raise SessionError(f"{self.path}: '{name}' {problem}")

    def get(self, section: dict, name: str):
        key = name.rsplit(".", 1)[-1]
        if key not in section:
            self.fail(name, "is missing")
        return section[key]

    def section(self, name: str) -> dict:
        value = self.get(self.info, name)
        if not isinstance(value, dict):
            self.fail(name, f"is a {_kind(value)}, not a section of fields")
        return value

    def mapping(self, section: dict, name: str, required: bool = True) -> dict:
        key = name.rsplit(".", 1)[-1]
        if not required and key not in section:
            return {}
        value = self.get(section, name)
        if not isinstance(value, dict):
            self.fail(name, f"is a {_kind(value)}, not a mapping")
        return value

    def integers(self, section: dict, name: str, minimum: int) -> list[int]:
        value = self.get(section, name)
        if not isinstance(value, list) or not all(_is_int(v) and v >= minimum for v in value):
            self.fail(name, f"is {value!r}, not a list of sizes")
        return [int(v) for v in value]

    def boolean(self, section: dict, name: str) -> bool:
        value = self.get(section, name)
        if not isinstance(value, bool):
            self.fail(name, f"is {value!r}, not true or false")
        return value


def _model(fields: _Fields) -> SessionModel:
    model = fields.section("model")
    name = fields.get(model, "model.name")
    if name not in MODEL_NAMES:
        fields.fail("model.name", f"is {name!r}, not one of {', '.join(MODEL_NAMES)}")
    size = fields.get(model, "model.input_size")
    if not _is_int(size) or size < 64 or size % 64 or size > 4096:
        fields.fail("model.input_size", f"is {size!r}, not a multiple of 64 (e.g. 1024)")
    precision = model.get("precision", "fp32")
    if precision not in PRECISIONS:
        fields.fail("model.precision", f"is {precision!r}, not one of {', '.join(PRECISIONS)}")
    compile_ = model.get("compile", False)
    if not isinstance(compile_, bool):
        fields.fail("model.compile", f"is {compile_!r}, not true or false")
    checkpoint = model.get("checkpoint")
    if checkpoint is not None and (not isinstance(checkpoint, str) or not checkpoint):
        fields.fail("model.checkpoint", f"is {checkpoint!r}, not a file path (or null)")
    return SessionModel(name, int(size), precision, compile_, checkpoint)


def _prompts(path: Path, geometry: StackGeometry) -> list[ObjectPrompt]:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    if len(lines) <= 1 and (not lines or "obj_id" in lines[0]):
        return []  # a session of masks only: the header and no rows
    prompts = read_prompts(path)
    for p in prompts:
        where = f"{path}, line {', '.join(map(str, p.lines or [p.box_line]))}"
        if not 0 <= p.frame < geometry.num_frames:
            raise SessionError(
                f"{where}: slice {p.frame} is out of range (the session tracks "
                f"{geometry.num_frames} slices)"
            )
        try:
            Prompt.build(geometry.spatial_shape, p.points or None, p.labels or None, p.box)
        except PromptError as e:
            raise SessionError(f"{where}: {e}") from None
    return prompts


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_text(text) -> bool:
    return isinstance(text, str) and text.strip().lstrip("-").isdigit()


def _kind(value) -> str:
    return {list: "list", dict: "mapping", str: "text"}.get(type(value), type(value).__name__)


def _axis_options(geometry: StackGeometry) -> str:
    if len(geometry.fixed) == 1:
        ((_, index),) = geometry.fixed.items()
        return f" --axis {geometry.stack_axis} --index {index}"
    return ""


__all__ = [
    "FORMAT",
    "SavedSession",
    "SessionError",
    "SessionModel",
    "check_image",
    "check_labels",
    "prompt_rows",
    "read",
    "restore",
    "slice_hashes",
    "write",
]
