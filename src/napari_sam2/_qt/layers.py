"""Reading prompts from napari layers and writing results into a Labels layer.

Coordinates go through world space, so layers with different ``scale``/``translate`` (and
anisotropic stacks) line up: a point's data coordinate in the Points layer -> world -> the
image layer's data coordinate -> (frame, row, col) by the stack geometry.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels, Points, Shapes

from ..engine.labels import compose_labels, compose_resolved, row_strips
from ..engine.session import BoxRow, PointRow
from ..engine.stack import StackGeometry
from ..engine.video import FrameResult

OBJ_ID, POSITIVE = "obj_id", "positive"
POSITIVE_COLOR, NEGATIVE_COLOR = (0.2, 1.0, 0.2, 1.0), (1.0, 0.2, 0.2, 1.0)


def _to_image_data(layer, image: Image, coords: np.ndarray) -> np.ndarray:
    """(N, D) data coordinates of ``layer`` -> (N, D) data coordinates of ``image``."""
    if len(coords) == 0:
        return np.zeros((0, image.ndim))
    return np.array([image.world_to_data(layer.data_to_world(c)) for c in coords])


def point_rows(points: Points, image: Image, geometry: StackGeometry) -> list[PointRow]:
    """Every click of ``points`` that lies on the tracked slices, as :class:`PointRow`."""
    if len(points.data) == 0:
        return []
    coords = _to_image_data(points, image, np.asarray(points.data))
    ids = points.features[OBJ_ID].to_numpy() if OBJ_ID in points.features else np.ones(len(coords))
    pos = (
        points.features[POSITIVE].to_numpy()
        if POSITIVE in points.features
        else np.ones(len(coords), bool)
    )
    rows = []
    for c, o, s in zip(coords, ids, pos):
        where = geometry.frame_of(c)
        if where is not None:
            frame, r, col = where
            rows.append(PointRow(int(o), frame, r, col, bool(s)))
    return rows


def box_rows(shapes: Shapes, image: Image, geometry: StackGeometry) -> list[BoxRow]:
    """Every rectangle of ``shapes`` on the tracked slices, as its bounding box."""
    rows = []
    ids = shapes.features[OBJ_ID].to_numpy() if OBJ_ID in shapes.features else None
    for i, (verts, kind) in enumerate(zip(shapes.data, shapes.shape_type)):
        if kind not in ("rectangle", "polygon"):
            continue
        coords = _to_image_data(shapes, image, np.asarray(verts))
        where = geometry.frame_of(coords[0])
        if where is None:
            continue
        n = geometry.ndim_spatial
        lo, hi = coords[:, n - 2 :].min(axis=0), coords[:, n - 2 :].max(axis=0)
        obj_id = int(ids[i]) if ids is not None else 1
        rows.append(BoxRow(obj_id, where[0], (lo[0], lo[1], hi[0], hi[1])))
    return rows


def color_points(points: Points) -> None:
    """Positive clicks green, negative red."""
    if len(points.data) and POSITIVE in points.features:
        pos = points.features[POSITIVE].to_numpy().astype(bool)
        points.face_color = np.where(pos[:, None], POSITIVE_COLOR, NEGATIVE_COLOR)


def write_changes(labels: Labels, geometry: StackGeometry, result: FrameResult, own=None):
    """Write one frame's result into ``labels`` (other labels untouched), only the box of the
    pixels that change: (the frame's new labels, that box (rows, cols) or None when nothing
    changes, the box's labels before). ``own``: the result's own labels, resolved ahead in a
    worker (:func:`~napari_sam2.engine.labels.result_labels`). Nothing is recorded in napari's
    undo history (the widget keeps its own)."""
    current = np.asarray(geometry.label_frames(labels.data)[result.frame])
    if own is None:
        new = compose_labels(current, result)
    else:
        new = compose_resolved(current, result.obj_ids, own)
    box = changed_box(current, new)
    if box is None:
        return new, None, None
    before = np.array(current[box], copy=True)
    labels.data[tuple(geometry.index(result.frame)) + box] = new[box]
    return new, box, before


def changed_box(old: np.ndarray, new: np.ndarray) -> tuple[slice, slice] | None:
    """The bounding box (rows, cols) of the pixels where two (H, W) slices differ; None when
    they are equal."""
    changed_rows, changed_cols = [], np.zeros(old.shape[-1], bool)
    for a, b in row_strips(old):
        diff = old[a:b] != new[a:b]
        changed_rows.append(diff.any(axis=1))
        changed_cols |= diff.any(axis=0)
    rows, cols = np.flatnonzero(np.concatenate(changed_rows)), np.flatnonzero(changed_cols)
    if rows.size == 0:
        return None
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def label_ids(frame: np.ndarray) -> set[int]:
    """The label values above 0 on an (H, W) frame (a count of each value where they are
    small: several times faster than sorting a slice), a strip at a time."""
    if frame.dtype.kind == "u" and frame.dtype.itemsize <= 2:
        counts = np.zeros(np.iinfo(frame.dtype).max + 1, np.int64)
        for a, b in row_strips(frame):
            strip = np.bincount(frame[a:b].ravel())
            counts[: strip.size] += strip
        return set(np.flatnonzero(counts).tolist()) - {0}
    return set().union(*(np.unique(frame[a:b]).tolist() for a, b in row_strips(frame))) - {0}


def outside_points(points: Points, image: Image, geometry: StackGeometry) -> list[int]:
    """Indices of the clicks that are not on the image: beyond its edges (napari lets one click
    anywhere on the canvas), or off the slices being tracked (another Z of a 4-D stack)."""
    if len(points.data) == 0:
        return []
    coords = _to_image_data(points, image, np.asarray(points.data))
    h, w = geometry.spatial_shape
    bad = []
    for i, c in enumerate(coords):
        where = geometry.frame_of(c)
        if where is None:
            bad.append(i)
            continue
        _, row, col = where
        if not (-0.5 <= row <= h - 0.5 and -0.5 <= col <= w - 0.5):
            bad.append(i)
    return bad


def tiny_boxes(shapes: Shapes, image: Image, geometry: StackGeometry, size: float = 3.0):
    """(index, (frame, obj_id, row, col)) of the rectangles smaller than ``size`` pixels each
    way on the tracked slices: a click on the boxes layer, not a drag, meant as a click."""
    ids = shapes.features[OBJ_ID].to_numpy() if OBJ_ID in shapes.features else None
    n = geometry.ndim_spatial
    found = []
    for i, (verts, kind) in enumerate(zip(shapes.data, shapes.shape_type)):
        if kind not in ("rectangle", "polygon"):
            continue
        coords = _to_image_data(shapes, image, np.asarray(verts))
        where = geometry.frame_of(coords[0])
        lo, hi = coords[:, n - 2 :].min(axis=0), coords[:, n - 2 :].max(axis=0)
        if where is None or (hi - lo >= size).any():
            continue
        obj_id = int(ids[i]) if ids is not None else 1
        found.append((i, (where[0], obj_id, (lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2)))
    return found


def add_prompts(points: Points, shapes: Shapes, image: Image, geometry, prompts) -> None:
    """Put saved clicks and boxes (ObjectPrompt, in slice pixels) back into the layers."""
    coords, ids, positive, rects, box_ids = [], [], [], [], []
    for p in prompts:
        lead = list(geometry.index(p.frame))
        for (row, col), label in zip(p.points, p.labels):
            world = image.data_to_world(lead + [row, col])
            coords.append(points.world_to_data(world))
            ids.append(p.obj_id)
            positive.append(bool(label))
        if p.box is not None:
            r0, c0, r1, c1 = p.box
            corners = [lead + [r, c] for r, c in ((r0, c0), (r0, c1), (r1, c1), (r1, c0))]
            rects.append([shapes.world_to_data(image.data_to_world(v)) for v in corners])
            box_ids.append(p.obj_id)
    if rects:
        shapes.add_rectangles(np.array(rects))
        shapes.features = shapes.features.assign(**{OBJ_ID: _tail(shapes, OBJ_ID, box_ids)})
    if coords:
        start = len(points.data)
        points.add(np.array(coords))
        features = points.features.copy()
        features.loc[start:, OBJ_ID] = ids
        features.loc[start:, POSITIVE] = positive
        points.features = features


def _tail(layer, column: str, values) -> np.ndarray:
    current = layer.features[column].to_numpy().copy()
    current[len(current) - len(values) :] = values
    return current


def erase_objects(labels: Labels, obj_ids) -> None:
    """Remove these objects' labels everywhere."""
    data = labels.data
    hit = np.isin(data, np.asarray(list(obj_ids)))
    if hit.any():
        data[hit] = 0
        labels.refresh()
