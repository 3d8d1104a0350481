"""Files in and out, for the command line and batch scripts: stacks read lazily, prompts from CSV,
label volumes written frame by frame.

- :func:`open_stack`: a TIFF / OME-TIFF, ``.npy`` or zarr stack as frames the tracker reads one at
  a time (memory-mapped or chunked; nothing is loaded whole).
- :func:`read_prompts`: clicks and boxes from a CSV file (our columns, or napari's Points export),
  every row checked, errors naming the line.
- :func:`add_prompts`: give them to a :class:`~napari_sam2.VideoTracker`.
- :func:`label_output`: a (T, H, W) label TIFF or zarr written in place, which appears under its
  final name only when complete.

See docs/cli.md for the file formats.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .engine.frames import FrameSourceError
from .engine.prompts import Prompt, PromptError
from .engine.stack import AxisFrames, StackError, StackGeometry

TIFF_SUFFIXES = (".tif", ".tiff")
STACK_SUFFIXES = (*TIFF_SUFFIXES, ".npy", ".zarr")
_INTEGER_TOLERANCE = 1e-3  # a frame written as 3.0 (napari writes floats) is frame 3


class InputError(ValueError):
    """A stack, prompts file, option or output path that cannot be used, and why."""


class PromptsFileError(InputError):
    """A bad prompts file; the message starts with ``file, line N:``."""

    def __init__(self, path, lines: int | Sequence[int] | None, message: str) -> None:
        self.path = Path(path)
        self.lines = [lines] if isinstance(lines, int) else list(lines or [])
        where = str(self.path)
        if self.lines:
            word = "line" if len(self.lines) == 1 else "lines"
            where += f", {word} {', '.join(map(str, self.lines))}"
        super().__init__(f"{where}: {message}")


def stack_stem(path: str | os.PathLike) -> str:
    """A stack's name without its extension(s): ``cells.ome.tif`` -> ``cells``."""
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr", *STACK_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


# ---------------------------------------------------------------------------------------- stacks
@dataclass
class Stack:
    """A stack on disk, seen as the frames the tracker follows objects through.

    ``frames``: (T, H, W) or (T, H, W, C), read one frame at a time. ``shape``/``axes``: the
    file's own array (axes as tifffile names them, e.g. ``"TZYX"``, where known). For data with
    two non-spatial axes, ``axis`` is the tracked one and ``index`` the position on the other.
    """

    path: Path
    frames: AxisFrames
    shape: tuple[int, ...]
    axes: str | None
    axis: int
    index: int | None
    _closers: list = field(default_factory=list, repr=False)

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.frames.shape[1], self.frames.shape[2]

    @property
    def label_shape(self) -> tuple[int, int, int]:
        """(T, H, W) of the label volume written for this stack."""
        return self.frames.shape[:3]

    @property
    def spatial_ndim(self) -> int:
        """Dimensions of the file that are not channels (what napari's point coordinates have)."""
        return len(self.shape) - self.frames.geometry.rgb

    def close(self) -> None:
        for close in self._closers:
            close()
        self._closers.clear()


def open_stack(
    path: str | os.PathLike, *, axis: int | None = None, index: int | None = None
) -> Stack:
    """Open a stack lazily: TIFF / OME-TIFF (memory-mapped when the file allows it, else read
    page by page through tifffile's zarr view), ``.npy`` (memory-mapped) or a zarr array (a
    zarr group: its OME-Zarr full-resolution level, or its only array).

    The last two axes are rows and columns; a last axis of at most 4 (RGB(A) or a few
    channels) is taken as channels. Of the axes before them, one is tracked: with one, it is
    that one; with two, e.g. (T, Z, Y, X), ``axis`` says which is tracked (0 or 1) and ``index``
    where on the other the frames are taken. A single 2-D image is a stack of one frame.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"stack not found: {path}")
    array, axes, closers = _open_array(path)
    shape = tuple(int(s) for s in array.shape)
    channels = _channel_count(shape, axes)
    lead = len(shape) - 2 - (channels is not None)
    where = f"{path} has shape {shape}" + (f" (axes {axes})" if axes else "")
    if lead > 2 or len(shape) < 2:
        raise InputError(
            f"{where}: expected 2 to 4 dimensions, e.g. (T, Y, X) or (T, Z, Y, X) (plus an RGB "
            "or channel axis last); select the data to segment first"
        )
    if lead == 2:
        if axis not in (0, 1) or index is None:
            raise InputError(
                f"{where}: two axes come before (Y, X); say which one to track with --axis "
                "(0 or 1) and where to take the frames on the other with --index"
            )
        other = 1 - axis
        if not 0 <= index < shape[other]:
            raise InputError(
                f"{where}: --index {index} is out of range for axis {other} (0..{shape[other] - 1})"
            )
    else:
        if axis not in (None, 0):
            raise InputError(f"{where}: the only axis that can be tracked is 0, not --axis {axis}")
        if index is not None:
            raise InputError(
                f"{where}: --index is for data with two axes before (Y, X), e.g. (T, Z, Y, X)"
            )
        axis = 0
    if 0 in shape:
        raise InputError(f"{where}: the stack is empty")
    try:
        geometry = StackGeometry(
            shape,
            rgb=channels is not None,
            stack_axis=axis if lead else None,
            fixed={1 - axis: index} if lead == 2 else {},
        )
    except StackError as e:
        raise InputError(f"{where}: {e}") from e
    frames = geometry.frames(array)
    if 0 in frames.shape:
        raise InputError(f"{where}: the stack is empty")
    return Stack(path, frames, shape, axes, axis, index if lead == 2 else None, closers)


def _open_array(path: Path):
    """(array, tifffile axes or None, [close functions])."""
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return _open_tiff(path)
    if suffix == ".npy":
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False), None, []
        except (ValueError, OSError) as e:
            raise InputError(f"cannot read {path} as a .npy array: {e}") from e
    if path.is_dir():
        return _open_zarr(path), None, []
    raise InputError(
        f"{path}: unsupported file type; give a TIFF / OME-TIFF (.tif, .tiff), a .npy file or a "
        "zarr directory"
    )


def _open_tiff(path: Path):
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            axes = tif.series[0].axes
        try:  # uncompressed, contiguous: the operating system pages it in as frames are read
            return tifffile.memmap(path, mode="r"), axes, []
        except ValueError:
            pass
        import zarr

        store = tifffile.imread(path, aszarr=True)  # chunked: one page at a time
        array = zarr.open(store, mode="r")
        if not hasattr(array, "shape"):  # a pyramid: the full-resolution level
            array = array["0"]
        return array, axes, [store.close]
    except (tifffile.TiffFileError, OSError, ValueError, KeyError) as e:
        raise InputError(f"cannot read {path} as a TIFF stack: {e}") from e


def _open_zarr(path: Path):
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as e:  # zarr raises several types for "not a zarr store"
        raise InputError(f"cannot open {path} as a zarr array or group: {e}") from e
    if hasattr(node, "shape"):
        return node
    multiscales = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
    if multiscales:
        return node[multiscales[0]["datasets"][0]["path"]]
    arrays = [name for name, _ in node.arrays()]
    if len(arrays) == 1:
        return node[arrays[0]]
    raise InputError(
        f"{path} is a zarr group with arrays {arrays or 'none'}: give the path of the array to "
        f"segment, e.g. {path / (arrays[0] if arrays else 'ARRAY')}"
    )


def _channel_count(shape: tuple[int, ...], axes: str | None) -> int | None:
    """The size of a trailing channel axis, or None."""
    if axes:
        return shape[-1] if axes[-1] in "SC" and len(shape) >= 3 else None
    if len(shape) >= 3 and shape[-1] <= 4 and min(shape[-3:-1]) > 4:
        return shape[-1]
    return None


# --------------------------------------------------------------------------------------- prompts
CLICK_COLUMNS = ("row", "col", "label")
BOX_COLUMNS = ("min_row", "min_col", "max_row", "max_col")
_LABEL_WORDS = {
    "1": 1,
    "0": 0,
    "positive": 1,
    "negative": 0,
    "pos": 1,
    "neg": 0,
    "true": 1,
    "false": 0,
}


@dataclass
class ObjectPrompt:
    """Everything given for one object on one frame: clicks (row, col) with labels 1/0 and at
    most one box (min_row, min_col, max_row, max_col); ``lines`` are where they came from."""

    frame: int
    obj_id: int
    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None
    lines: list[int] = field(default_factory=list)
    box_line: int | None = None


def read_prompts(path: str | os.PathLike, stack: Stack | None = None) -> list[ObjectPrompt]:
    """Read clicks and boxes from a CSV file, grouped per object and frame, sorted by frame.

    Two layouts are recognised by their header (docs/cli.md has the details):

    - ours: ``frame, obj_id`` and either ``row, col[, label]`` (a click) or ``min_row, min_col,
      max_row, max_col`` (a box) — both kinds may be mixed in one file, one per row;
    - napari's Points layer export: ``index, axis-0, axis-1, ...`` with optional ``obj_id`` and
      ``positive`` (or ``label``) feature columns.

    With ``stack``, napari's axes are matched to the stack's (``axis``/``index``) and every
    prompt is checked against the stack's frames and size. Raises :class:`PromptsFileError`
    naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompts file not found: {path}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(_csv_rows(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise PromptsFileError(path, None, f"not a readable CSV text file ({e})") from e
    if not rows:
        raise PromptsFileError(path, None, "the file is empty; expected a header row")
    header_line, header = rows[0]
    columns = [c.strip().lower() for c in header]
    body = rows[1:]
    if "axis-0" in columns:
        groups = _napari_points(path, columns, body, stack)
    else:
        groups = _our_rows(path, header_line, columns, body)
    if not groups:
        raise PromptsFileError(path, None, "no prompts: the file has a header but no rows")
    prompts = sorted(groups.values(), key=lambda p: (p.frame, p.obj_id))
    if stack is not None:
        check_prompts(prompts, stack, path)
    return prompts


def _csv_rows(f) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of every row that is not blank or a ``#`` comment."""
    reader = csv.reader(f)
    for row in reader:
        if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        yield reader.line_num, row


def _cell(row: list[str], columns: list[str], name: str) -> str:
    i = columns.index(name) if name in columns else -1
    return row[i].strip() if 0 <= i < len(row) else ""


def _number(path, line: int, name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise PromptsFileError(path, line, f"{name} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise PromptsFileError(path, line, f"{name} must be a finite number, got {text!r}")
    return value


def _integer(path, line: int, name: str, text: str, minimum: int) -> int:
    value = _number(path, line, name, text)
    if abs(value - round(value)) > _INTEGER_TOLERANCE or round(value) < minimum:
        kind = "a positive integer" if minimum == 1 else "an integer >= 0"
        raise PromptsFileError(path, line, f"{name} must be {kind}, got {text!r}")
    return int(round(value))


def _label(path, line: int, text: str) -> int:
    key = text.strip().lower()
    with contextlib.suppress(ValueError, OverflowError):
        key = key if key in _LABEL_WORDS else str(int(float(key)))
    if key not in _LABEL_WORDS:
        raise PromptsFileError(
            path, line, f"label must be 1 / 0 or positive / negative, got {text!r}"
        )
    return _LABEL_WORDS[key]


def _group(groups, frame: int, obj_id: int) -> ObjectPrompt:
    return groups.setdefault((frame, obj_id), ObjectPrompt(frame, obj_id))


def _add_box(path, groups, frame, obj_id, box, line: int) -> None:
    group = _group(groups, frame, obj_id)
    if group.box is not None:
        raise PromptsFileError(
            path,
            [group.box_line, line],
            f"two boxes for object {obj_id} on frame {frame}; one box per object and frame",
        )
    group.box, group.box_line = box, line
    group.lines.append(line)


def _our_rows(path, header_line: int, columns: list[str], body) -> dict:
    missing = [c for c in ("frame", "obj_id") if c not in columns]
    has_clicks = "row" in columns and "col" in columns
    has_boxes = all(c in columns for c in BOX_COLUMNS)
    if missing or not (has_clicks or has_boxes):
        hint = ""
        if {"x", "y"} & set(columns):
            hint = " Coordinates are (row, col) = (y, x): rename y to row and x to col."
        raise PromptsFileError(
            path,
            header_line,
            f"header {columns} lacks {missing or 'coordinates'}: expected columns frame, obj_id "
            "and row, col, label (clicks) and/or min_row, min_col, max_row, max_col (boxes), "
            "or napari's Points export (index, axis-0, axis-1, ...)." + hint,
        )
    groups: dict[tuple[int, int], ObjectPrompt] = {}
    for line, row in body:

        def cell(name: str, row=row) -> str:
            return _cell(row, columns, name)

        frame = _integer(path, line, "frame", cell("frame"), 0)
        obj_id = _integer(path, line, "obj_id", cell("obj_id"), 1)
        click = [cell(c) for c in ("row", "col")] if has_clicks else ["", ""]
        box = [cell(c) for c in BOX_COLUMNS] if has_boxes else ["", "", "", ""]
        is_click, is_box = all(click), all(box)
        if (is_click and is_box) or not (is_click or is_box):
            what = "both a click and a box" if is_click and is_box else "neither a click nor a box"
            raise PromptsFileError(
                path,
                line,
                f"the row has {what}: fill either row, col (and label) or min_row, min_col, "
                "max_row, max_col; put a box and clicks for the same object on separate rows",
            )
        if is_click:
            point = tuple(_number(path, line, c, v) for c, v in zip(("row", "col"), click))
            label = _label(path, line, cell("label")) if "label" in columns else 1
            group = _group(groups, frame, obj_id)
            group.points.append(point)
            group.labels.append(label)
            group.lines.append(line)
        else:
            corners = tuple(_number(path, line, c, v) for c, v in zip(BOX_COLUMNS, box))
            _add_box(path, groups, frame, obj_id, corners, line)
    return groups


def _napari_points(path, columns: list[str], body, stack: Stack | None) -> dict:
    n_axes = sum(1 for c in columns if c.startswith("axis-"))
    if [f"axis-{i}" for i in range(n_axes)] != [c for c in columns if c.startswith("axis-")]:
        raise PromptsFileError(path, None, f"napari Points header has odd axis columns: {columns}")
    if not 2 <= n_axes <= 4:
        raise PromptsFileError(path, None, f"points with {n_axes} coordinates are not supported")
    if stack is None and n_axes == 4:
        raise PromptsFileError(
            path, None, "points with 4 coordinates need the stack, to know which axis is tracked"
        )
    if stack is not None and n_axes != stack.spatial_ndim:
        raise PromptsFileError(
            path,
            None,
            f"the points have {n_axes} coordinates (axis-0..axis-{n_axes - 1}) but "
            f"{stack.path} has {stack.spatial_ndim} dimensions besides channels {stack.shape}; "
            "save the Points layer from a viewer showing this stack",
        )
    lead = n_axes - 2
    axis = stack.axis if stack is not None else 0
    index = stack.index if stack is not None else None
    label_column = "positive" if "positive" in columns else "label" if "label" in columns else None
    has_ids = "obj_id" in columns
    groups: dict[tuple[int, int], ObjectPrompt] = {}
    for n, (line, row) in enumerate(body, start=1):
        coords = [
            _number(path, line, f"axis-{i}", _cell(row, columns, f"axis-{i}"))
            for i in range(n_axes)
        ]
        if lead == 0:
            frame = 0
        else:
            frame = _integer(path, line, f"axis-{axis}", str(coords[axis]), 0)
        if lead == 2:
            other = 1 - axis
            if abs(coords[other] - index) > 0.5:
                raise PromptsFileError(
                    path,
                    line,
                    f"the point lies at {coords[other]:g} on axis {other}, but the frames are "
                    f"taken at --index {index}",
                )
        label = _label(path, line, _cell(row, columns, label_column)) if label_column else 1
        if has_ids:
            obj_id = _integer(path, line, "obj_id", _cell(row, columns, "obj_id"), 1)
        elif label == 0:
            raise PromptsFileError(
                path,
                line,
                "a negative point needs an obj_id column saying which object it belongs to "
                "(without obj_id, every point is an object of its own)",
            )
        else:
            obj_id = n
        group = _group(groups, frame, obj_id)
        group.points.append((coords[-2], coords[-1]))
        group.labels.append(label)
        group.lines.append(line)
    return groups


def check_prompts(prompts: Sequence[ObjectPrompt], stack: Stack, path) -> None:
    """Check frames and coordinates against the stack, without running the model."""
    n = stack.num_frames
    for p in prompts:
        if not 0 <= p.frame < n:
            raise PromptsFileError(
                path, p.lines, f"frame {p.frame} is out of range: {stack.path} has {n} frames"
            )
        try:
            Prompt.build(stack.frame_shape, p.points or None, p.labels or None, p.box)
        except PromptError as e:
            raise PromptsFileError(path, p.lines, str(e)) from None


def add_prompts(tracker, prompts: Sequence[ObjectPrompt], path=None) -> None:
    """Give every prompt to ``tracker`` (a :class:`~napari_sam2.VideoTracker`): one call per
    object and frame, box and clicks together. Errors name the lines of ``path``."""
    for p in prompts:
        try:
            tracker.add_prompt(
                p.frame, p.obj_id, points=p.points or None, labels=p.labels or None, box=p.box
            )
        except (PromptError, FrameSourceError) as e:
            raise PromptsFileError(path or "prompts", p.lines, str(e)) from None


# ---------------------------------------------------------------------------------------- labels
def label_dtype(max_id: int) -> np.dtype:
    """uint16 when every object id fits, else uint32."""
    return np.dtype(np.uint16 if max_id <= np.iinfo(np.uint16).max else np.uint32)


@contextlib.contextmanager
def label_output(
    path: str | os.PathLike,
    shape: tuple[int, int, int],
    dtype=np.uint16,
    *,
    overwrite: bool = False,
):
    """A writable (T, H, W) label volume at ``path``: a TIFF (``.tif``/``.tiff``, uncompressed
    and memory-mapped, so frames go to disk as they are written) or a zarr array (``.zarr``,
    one chunk per frame). It is written under a temporary name beside ``path`` and renamed when
    the block ends without error; on any error (Ctrl+C included) it is removed."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (*TIFF_SUFFIXES, ".zarr"):
        raise InputError(f"output {path}: the name must end in .tif, .tiff or .zarr")
    if path.exists() and not overwrite:
        raise InputError(f"output {path} exists; pass --overwrite (overwrite=True) to replace it")
    if not path.parent.is_dir():
        raise InputError(f"output folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.partial")
    _remove(tmp)
    try:
        if suffix == ".zarr":
            import zarr

            array = zarr.open_array(
                str(tmp), mode="w", shape=shape, chunks=(1, *shape[1:]), dtype=dtype
            )
        else:
            import tifffile

            array = tifffile.memmap(tmp, shape=shape, dtype=dtype, photometric="minisblack")
        yield array
        if isinstance(array, np.memmap):
            array.flush()
            del array
        _remove(path)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def label_counts(labels, num_ids: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per label value: voxels, and frames where it appears, reading one frame at a time."""
    voxels = np.zeros(1, dtype=np.int64)
    frames = np.zeros(1, dtype=np.int64)
    for t in range(labels.shape[0]):
        counts = np.bincount(np.asarray(labels[t]).ravel(), minlength=num_ids or 1)
        if len(counts) > len(voxels):
            voxels = np.pad(voxels, (0, len(counts) - len(voxels)))
            frames = np.pad(frames, (0, len(counts) - len(frames)))
        voxels[: len(counts)] += counts
        frames[: len(counts)] += counts > 0
    return voxels, frames


__all__ = [
    "InputError",
    "ObjectPrompt",
    "PromptsFileError",
    "Stack",
    "add_prompts",
    "check_prompts",
    "label_counts",
    "label_dtype",
    "label_output",
    "open_stack",
    "read_prompts",
    "stack_stem",
]
