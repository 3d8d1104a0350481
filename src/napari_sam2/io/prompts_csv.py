"""Clicks and boxes from CSV files (our columns, or napari's Points export), every row checked,
errors naming the line."""

from __future__ import annotations

import contextlib
import csv
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.frames import FrameSourceError
from ..engine.prompts import MAX_OBJ_ID, Prompt, PromptError
from .errors import InputError, PromptsFileError
from .stacks import Stack

_FRAME_TOLERANCE = 1e-3  # a frame written as 3.0 (napari writes float coordinates) is frame 3
_EXACT_IN_FLOAT = 2**53  # floats hold every integer up to this exactly, and no further

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


_INTEGER_TEXT = re.compile(r"[+-]?\d+")


def _integer(path, line: int, name: str, text: str, minimum: int, tolerance: float = 0.0) -> int:
    """An integer cell, read as an integer (``int``, exact at any size); a float spelling
    (``3.0``, as napari writes) is accepted when it is a whole number within ``tolerance`` and
    small enough for a float to hold it exactly (2**53)."""
    kind = "a positive integer" if minimum == 1 else "an integer >= 0"
    text = text.strip()
    if _INTEGER_TEXT.fullmatch(text):
        value = int(text)
    else:
        number = _number(path, line, name, text)
        if abs(number) >= _EXACT_IN_FLOAT:  # 2**53 + 1 reads as 2**53: which one was meant?
            raise PromptsFileError(
                path,
                line,
                f"{name} must be {kind} written with digits only, got {text!r}: a float "
                f"spelling from 2**53 ({_EXACT_IN_FLOAT:,}) on cannot say which integer it is",
            )
        if abs(number - round(number)) > tolerance:
            raise PromptsFileError(path, line, f"{name} must be {kind}, got {text!r}")
        value = int(round(number))
    if value < minimum:
        raise PromptsFileError(path, line, f"{name} must be {kind}, got {text!r}")
    return value


def _obj_id(path, line: int, text: str) -> int:
    obj_id = _integer(path, line, "obj_id", text, 1)
    if obj_id > MAX_OBJ_ID:
        raise PromptsFileError(
            path,
            line,
            f"obj_id {obj_id} is too large for any label array (at most {MAX_OBJ_ID}, the "
            "largest uint64); use smaller ids",
        )
    return obj_id


def _label(path, line: int, text: str) -> int:
    key = text.strip().lower()
    if key not in _LABEL_WORDS:
        with contextlib.suppress(ValueError, OverflowError):
            number = float(key)  # napari writes 1.0 / 0.0; only exactly 1 or 0 is a label
            if number in (0.0, 1.0):
                key = str(int(number))
    if key not in _LABEL_WORDS:
        raise PromptsFileError(
            path,
            line,
            f"label must be 1 / 0 exactly (or positive / negative, pos / neg, true / false), "
            f"got {text!r}",
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

        frame = _integer(path, line, "frame", cell("frame"), 0, _FRAME_TOLERANCE)
        obj_id = _obj_id(path, line, cell("obj_id"))
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
            frame = _integer(path, line, f"axis-{axis}", repr(coords[axis]), 0, _FRAME_TOLERANCE)
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
            obj_id = _obj_id(path, line, _cell(row, columns, "obj_id"))
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


def write_prompts(path: str | os.PathLike, prompts: Sequence[ObjectPrompt]) -> None:
    """Write clicks and boxes in our CSV layout (what :func:`read_prompts` and the command line
    read): one row per click, one per box."""
    path = Path(path)
    header = ("frame", "obj_id", *CLICK_COLUMNS, *BOX_COLUMNS)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for p in sorted(prompts, key=lambda p: (p.frame, p.obj_id)):
            for (row, col), label in zip(p.points, p.labels):
                writer.writerow([p.frame, p.obj_id, f"{row:g}", f"{col:g}", label, "", "", "", ""])
            if p.box is not None:
                writer.writerow([p.frame, p.obj_id, "", "", "", *(f"{v:g}" for v in p.box)])
