"""Tracks out: the Cell Tracking Challenge format, GEFF, and a CSV of measurements per track.

All three read a label volume whose values are track ids — what tracking with a lineage writes
(``VideoTracker.propagate(..., divisions=True)``) — and the parent links of
``tracker.lineage`` (``parents``: {daughter id: parent id}). Frames are the first axis; the rest
is 2-D (Y, X) or 3-D (Z, Y, X): a 3-D time-lapse gives 3-D masks.

- :func:`write_ctc`: ``maskTTT.tif`` per frame (``maskTTTT.tif`` past 1,000 frames) and
  ``res_track.txt`` (``L B E P`` per track) by the CTC rules: a track is one id on consecutive
  frames, so a track with a gap is cut into one id per stretch, each later stretch a new id
  whose parent is the stretch before (the CTC's own way to carry a track over a gap); a daughter
  starts after its parent's last frame (a link that does not is dropped, with a warning); ids are
  unique and positive.
- :func:`write_geff`: a GEFF graph (``geff`` package, the ``lineage`` extra): one node per
  track and frame (t, [z,] y, x, area, track_id), edges from each node to the next of its track
  and from a parent's last node to its daughters' first.
- :func:`write_tracks_csv`: one row per track and frame: frame, track_id, parent, area,
  centroid, and the mean intensity of ``image`` in the mask (scikit-image's regionprops).
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np

from .errors import InputError


def ctc_tracks(labels, parents: dict | None = None):
    """The CTC tracks of a label volume: (rows [(L, B, E, P)], {(frame, old id): new id} for the
    stretches after a gap that get a new id)."""
    frames_of: dict[int, list[int]] = {}
    for t in range(labels.shape[0]):
        for i in np.unique(np.asarray(labels[t])).tolist():
            if i:
                frames_of.setdefault(int(i), []).append(t)
    next_id = max(frames_of, default=0) + 1
    rows, renamed, stretches = [], {}, {}
    for track_id in sorted(frames_of):
        frames = frames_of[track_id]
        cuts = [0] + [k for k in range(1, len(frames)) if frames[k] != frames[k - 1] + 1]
        previous = 0
        for n, a in enumerate(cuts):
            b = cuts[n + 1] if n + 1 < len(cuts) else len(frames)
            new_id = track_id if n == 0 else next_id
            if n:
                next_id += 1
                for t in frames[a:b]:
                    renamed[(t, track_id)] = new_id
            rows.append([new_id, frames[a], frames[b - 1], previous])
            stretches.setdefault(track_id, []).append((frames[a], frames[b - 1], new_id))
            previous = new_id
    by_id = {r[0]: r for r in rows}
    for daughter, parent in (parents or {}).items():
        if daughter not in stretches or not parent:
            continue
        row = by_id[stretches[daughter][0][2]]
        before = [s for s in stretches.get(parent, []) if s[1] < row[1]]
        if not before:
            warnings.warn(
                f"track {daughter} starts on frame {row[1]}, not after its parent {parent}'s "
                "last frame: the link is left out of the CTC tracks",
                stacklevel=3,
            )
            continue
        row[3] = before[-1][2]
    return [tuple(r) for r in rows], renamed


def write_ctc(labels, folder, parents: dict | None = None, *, overwrite: bool = False):
    """Write ``labels`` (T, [Z,] Y, X) in the CTC format into ``folder`` (see the module
    docstring). Returns the rows of ``res_track.txt``. Refuses a folder that holds CTC files
    already, unless ``overwrite``."""
    import tifffile

    folder = Path(folder)
    labels_shape = getattr(labels, "shape", ())
    if len(labels_shape) not in (3, 4):
        raise InputError(f"CTC labels must be (T, Y, X) or (T, Z, Y, X), got shape {labels_shape}")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"CTC output {folder} is a file, not a folder")
    if folder.is_dir() and not overwrite:
        old = [p.name for p in folder.iterdir() if p.name == "res_track.txt" or p.suffix == ".tif"]
        if old:
            raise InputError(
                f"CTC output {folder} already holds {old[0]}; give another folder or --overwrite"
            )
    rows, renamed = ctc_tracks(labels, parents)
    top = max((r[0] for r in rows), default=0)
    dtype = np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32
    folder.mkdir(parents=True, exist_ok=True)
    digits = 3 if labels_shape[0] <= 1000 else 4
    for t in range(labels_shape[0]):
        frame = np.asarray(labels[t]).astype(dtype)
        for (f, old), new in renamed.items():
            if f == t:
                frame[np.asarray(labels[t]) == old] = new
        tifffile.imwrite(
            folder / f"mask{t:0{digits}d}.tif", frame, photometric="minisblack", compression="zlib"
        )
    with open(folder / "res_track.txt", "w") as f:
        for r in rows:
            f.write(" ".join(str(v) for v in r) + "\n")
    return rows


def measurements(labels, image=None, parents: dict | None = None, channel: int = 0) -> list[dict]:
    """One dict per track and frame: frame, track_id, parent, area, centroid (z,) y, x and,
    with ``image`` (same shape as ``labels``, or with a trailing channel axis: ``channel``),
    mean_intensity."""
    from skimage.measure import regionprops

    parents = parents or {}
    rows = []
    for t in range(labels.shape[0]):
        frame = np.asarray(labels[t])
        img = None
        if image is not None:
            img = np.asarray(image[t])
            if img.shape != frame.shape:
                img = img[..., channel]
        for region in regionprops(frame.astype(np.int64), intensity_image=img):
            row = {"frame": t, "track_id": int(region.label)}
            row["parent"] = int(parents.get(row["track_id"], 0))
            row["area"] = int(region.area)
            axes = ("z", "y", "x")[-frame.ndim :]
            row.update({f"centroid_{a}": float(c) for a, c in zip(axes, region.centroid)})
            if img is not None:
                row["mean_intensity"] = float(region.intensity_mean)
            rows.append(row)
    return rows


def write_tracks_csv(labels, path, image=None, parents: dict | None = None, channel=0) -> int:
    """The :func:`measurements` as a CSV file (one row per track and frame). Returns the rows."""
    rows = measurements(labels, image, parents, channel)
    columns = list(rows[0]) if rows else ["frame", "track_id", "parent", "area"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def write_geff(labels, path, parents: dict | None = None, *, overwrite: bool = False) -> int:
    """The tracks as a GEFF graph at ``path`` (a zarr folder). Returns the number of nodes.
    Needs the ``geff`` package: ``pip install napari-sam2[lineage]``."""
    try:
        import geff
        import networkx as nx
    except ImportError:
        raise InputError(
            "writing GEFF needs the geff package: pip install 'napari-sam2[lineage]'"
        ) from None
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"GEFF output {path} exists; give another path or --overwrite")
    parents = parents or {}
    graph = nx.DiGraph()
    last_node: dict[int, int] = {}
    first_node: dict[int, int] = {}
    spatial = ("z", "y", "x")[-(labels.ndim - 1) :]
    for n, row in enumerate(measurements(labels, None, parents)):
        track = row["track_id"]
        attrs = {"t": float(row["frame"]), "area": float(row["area"]), "track_id": track}
        attrs.update({a: row[f"centroid_{a}"] for a in spatial})
        graph.add_node(n, **attrs)
        if track in last_node:
            graph.add_edge(last_node[track], n)
        first_node.setdefault(track, n)
        last_node[track] = n
    for daughter, parent in parents.items():
        if daughter in first_node and parent in last_node:
            graph.add_edge(last_node[parent], first_node[daughter])
    names = ["t", *spatial]
    geff.write(
        graph,
        os.fspath(path),
        axis_names=names,
        axis_types=["time"] + ["space"] * len(spatial),
        overwrite=overwrite,
    )
    return graph.number_of_nodes()


def check_tracks_output(path, overwrite: bool = False) -> Path:
    """A ``--tracks`` path: .csv or .geff (with the geff package installed), not existing unless
    ``overwrite``, in a writable folder. Raises InputError before anything runs."""
    from .outputs import check_writable_folder

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".geff"):
        raise InputError(f"tracks file {path}: the name must end in .csv or .geff")
    if suffix == ".geff":
        try:
            import geff  # noqa: F401
        except ImportError:
            raise InputError(
                "writing GEFF needs the geff package: pip install 'napari-sam2[lineage]'"
            ) from None
    if path.exists() and not overwrite:
        raise InputError(f"tracks file {path} exists; pass --overwrite to replace it")
    check_writable_folder(path.parent, what="tracks folder")
    return path


def write_tracks(labels, path, image=None, parents=None, channel=0, overwrite=False) -> int:
    """:func:`write_tracks_csv` or :func:`write_geff`, by the name of ``path``."""
    if Path(path).suffix.lower() == ".geff":
        return write_geff(labels, path, parents, overwrite=overwrite)
    return write_tracks_csv(labels, path, image, parents, channel)


def parents_of(lineage) -> dict[int, int]:
    """{daughter id: parent id} of ``tracker.lineage`` rows."""
    return {int(r.id): int(r.parent) for r in lineage if r.parent}
