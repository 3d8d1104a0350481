"""OME-Zarr (NGFF 0.5) label images as :func:`~napari_sam2.io.outputs.label_output` writes them.

Two layouts, both valid for ome-zarr-models and opened by ome-zarr's Reader:

- **inside the image** (``IMAGE.ome.zarr/labels/NAME``): the label image has the image's axes
  (a channel axis of size 1), its levels (each downsampled from the full resolution by taking
  the nearest pixel, never averaged), and every level's scale and translation copied from the
  image, so viewers lay it exactly over the image. Only ``labels/`` changes.
- **standalone** (``out.ome.zarr``): a ``labels`` group holding the label image ``sam2`` with
  one level, of the tracked axis, Y and X, with the image's scale and translation.

Either way every array has ``dimension_names``, and the ``image-label`` metadata give each
object's id a colour and ``properties`` (its name and where it came from)."""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

import numpy as np

from .errors import InputError
from .ome import LABEL_NAME, Geometry, _axis, unknown

NGFF_VERSION = "0.5"
# zarr outputs store only the frames written with labels in them (an untracked or empty frame
# is no chunk: a 10**6-frame stack tracked on 3 frames is a small store)
SPARSE = {"fill_value": 0, "config": {"write_empty_chunks": False}}
CHUNK = 4096  # the most pixels per chunk along Y and X


# ------------------------------------------------------------------------ where labels go
def image_of_labels(path: str | Path) -> Path | None:
    """The OME-Zarr image whose own ``labels`` group ``path`` names (``IMAGE/labels/NAME``,
    IMAGE a folder holding OME-Zarr image metadata), or None."""
    path = Path(path)
    if path.parent.name != "labels":
        return None
    image = path.parent.parent
    return image if image_metadata(image) is not None else None


def image_metadata(image: Path) -> dict | None:
    """The attributes of an OME-Zarr image group (0.5: the ``ome`` attribute; 0.4: the
    ``.zattrs``), or None when ``image`` is not one."""
    for name, nested in (("zarr.json", True), (".zattrs", False)):
        try:
            text = (image / name).read_text()
            attrs = json.loads(text)
        except (OSError, ValueError):
            continue
        if nested:
            attrs = attrs.get("attributes", {}).get("ome", {})
        if isinstance(attrs, dict) and attrs.get("multiscales"):
            return {**attrs, "_zarr_format": 3 if nested else 2}
    return None


def check_into_image(path: Path) -> Path:
    """Check that labels can be written at ``IMAGE/labels/NAME``: an NGFF 0.5 image (zarr
    v3), a name readers accept, a ``labels`` node that is a group if it exists, a folder we may
    write in. Returns the image. Nothing is created."""
    import os

    image = path.parent.parent
    meta = image_metadata(image) or {}
    if meta.get("_zarr_format") != 3:
        raise InputError(
            f"output {path}: {image} is an NGFF 0.4 (zarr v2) image; labels are written into "
            "NGFF 0.5 (zarr v3) images only. Write them beside it (-o labels.ome.zarr), or "
            "convert the image to NGFF 0.5 first"
        )
    name = path.name
    if not name or name.startswith(".") or "/" in name:
        raise InputError(f"output {path}: a label image needs a plain name, e.g. labels/cells")
    labels = path.parent
    ours = labels.is_dir() and all(p.name.startswith(".") for p in labels.iterdir())
    if labels.exists() and not ours:  # (ours: what an interrupted run of ours left)
        try:
            node = json.loads((labels / "zarr.json").read_text())
        except (OSError, ValueError):
            node = None
        if not isinstance(node, dict) or node.get("node_type") != "group":
            raise InputError(
                f"output {path}: {labels} exists but is not a zarr group; move it away first"
            )
    folder = labels if labels.exists() else image
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"output {path}: {folder} is not writable (permission denied)")
    return image


def placement(image_meta: dict, label_shape, geometry: Geometry, fixed: dict | None):
    """How the (N, Y, X) label volume lies in the image: the label array's shape (the image's
    full-resolution shape with a channel axis of 1) and, per image axis, "n" (the volume's
    first axis), "y"/"x", or a fixed index. Refused with :class:`InputError` when the volume
    does not fit the image."""
    ms = image_meta["multiscales"][0]
    names = [_first(a) for a in ms["axes"]]
    shape = image_meta["_shapes"][0]
    tracked = geometry.axes[0]
    fixed = dict(fixed or {})
    if tracked not in names:  # an unnamed first axis: the image's one of that length
        sizes = [n for n, s in zip(names, shape) if n not in "yxc" and n not in fixed
                 and s == label_shape[0] > 1]  # fmt: skip
        tracked = sizes[0] if len(sizes) == 1 else tracked
    where, out = [], []
    for name, size in zip(names, shape):
        if name in ("y", "x"):
            where.append(name)
            out.append(size)
        elif name == tracked and tracked not in fixed and size == label_shape[0]:
            where.append("n")
            out.append(size)
        elif name in fixed:
            where.append(int(fixed[name]))
            out.append(size)
        elif name == "c" or size == 1:
            where.append(0)
            out.append(1)
        else:
            raise InputError(
                f"labels of shape {tuple(label_shape)} (axes {geometry.axes}) do not fit the "
                f"image of shape {tuple(shape)} (axes {''.join(names)}): its axis {name!r} is "
                "neither tracked nor fixed; write the labels beside it (-o labels.ome.zarr)"
            )
    yx = tuple(s for s, w in zip(shape, where) if w in ("y", "x"))
    if yx != tuple(label_shape[1:]) or ("n" not in where and label_shape[0] != 1):
        raise InputError(
            f"labels of shape {tuple(label_shape)} do not fit the image of shape "
            f"{tuple(shape)}; write them beside it (-o labels.ome.zarr)"
        )
    return tuple(out), where


def _first(axis) -> str:
    return str(axis["name"] if isinstance(axis, dict) else axis)[:1].lower()


# ------------------------------------------------------------------------------- writing
class LabelVolume:
    """A (N, Y, X) label volume read and written by frame (``v[t]``, ``v[t] = frame``) in the
    full-resolution array of an OME-Zarr label image, whose levels and metadata
    :meth:`finish` writes."""

    def __init__(self, group, shape, dtype, where, levels, multiscale, image_label) -> None:
        self.group = group
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.ndim = 3
        self.where = where  # per label axis: "n", "y", "x" or a fixed index
        self.levels = levels  # [(path, shape, transforms)]
        self.multiscale = multiscale
        self.image_label = image_label
        self.written: set[int] = set()
        self.array = group[levels[0][0]]

    def _key(self, t: int) -> tuple:
        return tuple(t if w == "n" else slice(None) if w in ("y", "x") else w for w in self.where)

    def __getitem__(self, t):
        return np.asarray(self.array[self._key(int(t))]).reshape(self.shape[1:])

    def __setitem__(self, t, value) -> None:
        t = int(t)
        if t < 0:
            t += self.shape[0]
        self.array[self._key(t)] = np.asarray(value, dtype=self.dtype).reshape(
            _plane_shape(self.array.shape, self.where)
        )
        self.written.add(t)

    def __array__(self, dtype=None, copy=None):
        out = np.stack([self[t] for t in range(self.shape[0])])
        return out if dtype is None else out.astype(dtype)

    def finish(self, names: dict | None, source: str | None, mark: dict) -> None:
        """The downsampled levels, then the metadata: multiscales, ``image-label`` (a colour and
        properties per id found), and ``mark`` (napari-sam2's own attribute)."""
        ids: set[int] = set()
        for t in sorted(self.written):
            ids.update(np.unique(self[t]).tolist())
        ids.discard(0)
        for path, _shape, _ in self.levels[1:]:
            _downsample(self.array, self.group[path], self.where, self.written)
        label = dict(self.image_label)
        label["colors"] = [{"label-value": i, "rgba": colour(i)} for i in sorted(ids)]
        label["properties"] = [
            {"label-value": i, "name": (names or {}).get(i) or f"object {i}",
             "source": source or "napari-sam2"}
            for i in sorted(ids)
        ]  # fmt: skip
        attrs = dict(self.group.attrs)
        attrs["ome"] = {
            "version": NGFF_VERSION,
            "multiscales": [self.multiscale],
            "image-label": label,
        }
        attrs.update(mark)
        self.group.attrs.put(attrs)


def _plane_shape(shape, where) -> tuple:
    return tuple(s for s, w in zip(shape, where) if w in ("y", "x"))


def _downsample(source, target, where, written) -> None:
    """Fill the level ``target`` from the full resolution ``source`` by nearest pixel: the
    pixel whose centre is nearest each target pixel's centre (label values are never mixed).
    Only the frames in ``written`` are read; the rest stay 0 (stored as nothing)."""
    maps = [_nearest(n, m) for n, m in zip(source.shape, target.shape)]
    n_axis = where.index("n") if "n" in where else None
    lead = [i for i, w in enumerate(where) if w not in ("y", "x")]
    yx = [i for i, w in enumerate(where) if w in ("y", "x")]
    for index in np.ndindex(*[target.shape[i] for i in lead]):
        src = dict(zip(lead, (int(maps[i][j]) for i, j in zip(lead, index))))
        if n_axis is not None and src[n_axis] not in written:
            continue
        if any(isinstance(where[i], int) and src[i] != where[i] for i in lead):
            continue  # another position on a fixed axis: nothing was written there
        key = tuple(src[i] if i in src else slice(None) for i in range(len(where)))
        plane = np.asarray(source[key])
        out = plane[np.ix_(maps[yx[0]], maps[yx[1]])]
        if out.any():
            target[tuple(index[lead.index(i)] if i in src else slice(None)
                         for i in range(len(where)))] = out  # fmt: skip


def _nearest(n: int, m: int) -> np.ndarray:
    """For each of ``m`` pixels spanning the same extent as ``n``, the nearest of the ``n``."""
    return np.minimum(((np.arange(m) + 0.5) * n / m).astype(np.int64), n - 1)


def colour(label: int) -> list[int]:
    """A stable, distinct RGBA colour (0..255) per label value (golden-ratio hues)."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 1.0)
    return [round(r * 255), round(g * 255), round(b * 255), 255]


def _chunks(shape, where) -> tuple:
    return tuple(min(s, CHUNK) if w in ("y", "x") else 1 for s, w in zip(shape, where))


def new_standalone(path: Path, shape, dtype, geometry: Geometry | None) -> LabelVolume:
    """A ``labels`` group at ``path`` with the label image ``sam2`` of one level (N, Y, X)."""
    import zarr

    geometry = geometry or unknown(3, "tyx")
    names = ("z" if geometry.axes[0] == "z" else "t") + "yx"  # what NGFF allows for (N, Y, X)
    labels = zarr.open_group(str(path), mode="w", zarr_format=3)
    labels.attrs["ome"] = {"version": NGFF_VERSION, "labels": [LABEL_NAME]}
    image = labels.create_group(LABEL_NAME)
    where = ["n", "y", "x"]
    image.create_array(
        "0", shape=shape, chunks=_chunks(shape, where), dtype=dtype, dimension_names=names,
        **SPARSE,
    )  # fmt: skip
    transforms = [{"type": "scale", "scale": [1.0 if s is None else float(s)
                                              for s in geometry.sizes]}]  # fmt: skip
    origin = getattr(geometry, "origin", None)
    if origin is not None and any(origin):
        transforms.append({"type": "translation", "translation": [float(o) for o in origin]})
    multiscale = {
        "name": LABEL_NAME,
        "axes": [_axis(a, unit) for a, unit in zip(names, geometry.units)],
        "datasets": [{"path": "0", "coordinateTransformations": transforms}],
    }
    return LabelVolume(image, shape, dtype, where, [("0", shape, transforms)], multiscale,
                       {"version": NGFF_VERSION})  # fmt: skip


def new_in_image(
    tmp: Path, image: Path, name: str, shape, dtype, geometry: Geometry | None, fixed
) -> LabelVolume:
    """A label image at ``tmp`` (inside ``IMAGE/labels/``) for the image ``image``: its axes,
    levels and transforms, the (N, Y, X) volume placed as :func:`placement` says."""
    import zarr

    meta = dict(image_metadata(image) or {})
    ms = meta["multiscales"][0]
    root = zarr.open_group(str(image), mode="r")
    meta["_shapes"] = [tuple(root[d["path"]].shape) for d in ms["datasets"]]
    geometry = geometry or unknown(3, "tyx")
    full, where = placement(meta, shape, geometry, fixed)
    names = [str(a["name"] if isinstance(a, dict) else a) for a in ms["axes"]]
    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    levels = []
    for i, (dataset, image_shape) in enumerate(zip(ms["datasets"], meta["_shapes"])):
        level = tuple(1 if full[k] == 1 and image_shape[k] != 1 else image_shape[k]
                      for k in range(len(full)))  # fmt: skip
        if i == 0:
            level = full
        group.create_array(
            dataset["path"], shape=level, chunks=_chunks(level, where), dtype=dtype,
            dimension_names=names, **SPARSE,
        )  # fmt: skip
        levels.append((dataset["path"], level, dataset.get("coordinateTransformations")))
    multiscale = {k: v for k, v in ms.items() if k not in ("metadata", "type", "name")}
    multiscale["name"] = name
    label = {"version": NGFF_VERSION, "source": {"image": "../../"}}
    return LabelVolume(group, shape, dtype, where, levels, multiscale, label)


def list_label(labels: Path, name: str) -> None:
    """Add ``name`` to the ``labels`` group's list (made if missing), keeping the others."""
    import zarr

    group = zarr.open_group(str(labels), mode="a", zarr_format=3)
    ome = dict(group.attrs.get("ome", {}))
    names = [n for n in ome.get("labels", []) if n != name and (labels / n).exists()]
    ome.update(version=NGFF_VERSION, labels=[*names, name])
    group.attrs["ome"] = ome
