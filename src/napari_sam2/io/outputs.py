"""Label volumes written frame by frame, appearing under their final name only when complete,
and the checks that an output path is safe to write before anything runs."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

import numpy as np

from ..engine.labels import label_dtype_for
from .errors import InputError
from .ome import LABEL_NAME, Geometry, tiff_metadata
from .ome_labels import SPARSE, check_into_image, image_of_labels
from .stacks import TIFF_SUFFIXES, is_url

OUTPUT_SUFFIXES = (*TIFF_SUFFIXES, ".zarr")

# How a label volume says that napari-sam2 wrote it (what --resume needs to prove before it
# redoes an output): a private TIFF tag, or an attribute of the zarr array / OME-Zarr group,
# set when the volume is complete.
MARK = "napari-sam2 labels"
MARK_TAG = 65417  # a private TIFF tag (>= 65000), ASCII
MARK_ATTR = "napari_sam2"


def label_dtype(max_id: int) -> np.dtype:
    """uint16 when every object id fits, else uint32, else uint64."""
    return label_dtype_for(max_id)


def local_path(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a local :class:`Path`; a URL is refused with :class:`InputError` (stacks are
    read from URLs, read-only; everything napari-sam2 writes, and the prompts it reads, are
    local files). ``what`` names it in the message ("output", "prompts file", ...)."""
    if is_url(path):
        raise InputError(
            f"{what} {path} is a URL: napari-sam2 reads stacks (OME-Zarr) from URLs, read-only, "
            "but writes outputs and reads prompts and embeddings only as local files; give a "
            "local path"
        )
    return Path(path)


def check_output(
    path: str | os.PathLike,
    inputs=(),
    *,
    overwrite: bool = False,
    read_only=(),
    folder_exists: bool = True,
    any_name: bool = False,
) -> Path:
    """Check, before anything runs, that a label volume can be written at ``path`` (with
    ``any_name``, a folder of any name: a CTC output).

    Refused with :class:`InputError`: a name that is not .tif/.tiff/.zarr (or .ome.zarr, or
    ``IMAGE.ome.zarr/labels/NAME``: the labels group of an OME-Zarr image); an output that is
    one of ``inputs``, holds one of them (a zarr group around the input array) or lies inside
    one (except an input image's own ``labels/NAME``, the one place meant for it); an output
    that is or holds one of ``read_only`` (files such as a prompts CSV, whose folder may hold
    outputs; a remote input, a URL, is none of these); an existing output without
    ``overwrite``; a folder that does not exist (unless ``folder_exists`` is False: it will be
    made) or cannot be written; a URL (outputs are local files). Nothing is created or
    changed."""
    path = local_path(path, "output")
    image = image_of_labels(path)
    if image is not None:
        check_into_image(path)
    elif not any_name and path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise InputError(
            f"output {path}: the name must end in .tif, .tiff or .zarr, or be "
            "IMAGE.ome.zarr/labels/NAME (the labels of an OME-Zarr image)"
        )
    target = path.resolve()
    for source, inside_ok in [(s, False) for s in inputs] + [(s, True) for s in read_only]:
        if is_url(source):  # a remote stack: no local output is it, in it or around it
            continue
        src = Path(source).resolve()
        if image is not None and src == image.resolve() and not inside_ok:
            continue  # the image's own labels group: the one output allowed inside an input
        if target == src:
            raise InputError(f"output {path} is the input {source} itself; choose another name")
        if target in src.parents:
            raise InputError(
                f"output {path} contains the input {source}: writing it would delete the input; "
                "choose an output outside it"
            )
        if src in target.parents and not inside_ok:
            raise InputError(
                f"output {path} lies inside the input {source}; choose an output outside it"
            )
    if folder_exists:
        if path.exists() and not overwrite:
            raise InputError(
                f"output {path} exists; pass --overwrite (overwrite=True) to replace it, or "
                "--resume (resume=True) to keep complete outputs and redo the others"
            )
        if image is None:
            check_writable_folder(path.parent, what="output folder")
    return path


def make_output_folder(path: str | os.PathLike) -> None:
    """Make the folder an output at ``path`` goes in (not an image's ``labels`` group: the
    writer makes it, and removes it again if the writing fails)."""
    path = Path(path)
    if image_of_labels(path) is None:
        path.parent.mkdir(parents=True, exist_ok=True)


def is_zarr_output(path: str | os.PathLike) -> bool:
    """Whether an output at ``path`` is zarr (a ``.zarr`` name or an image's ``labels/NAME``)."""
    return Path(path).suffix.lower() == ".zarr" or image_of_labels(path) is not None


def check_writable_folder(folder: str | os.PathLike, *, what: str, create: bool = False) -> None:
    """``folder`` exists (or, with ``create``, can be created) and we may write in it."""
    folder = local_path(folder, what)
    if not folder.exists():
        if not create:
            raise InputError(f"{what} {folder} does not exist; create it first")
        parent = next((p for p in folder.parents if p.exists()), None)
        if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise InputError(f"{what} {folder} cannot be created (no write permission)")
        return
    if not folder.is_dir():
        raise InputError(f"{what} {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{what} {folder} is not writable (permission denied)")


@contextlib.contextmanager
def label_output(
    path: str | os.PathLike,
    shape: tuple[int, int, int],
    dtype=np.uint16,
    *,
    overwrite: bool = False,
    geometry: Geometry | None = None,
    names: dict[int, str] | None = None,
    source: str | None = None,
    fixed: dict[str, int] | None = None,
):
    """A writable (T, H, W) label volume at ``path``: a TIFF (``.tif``/``.tiff``, uncompressed
    and memory-mapped, so frames go to disk as they are written), a zarr array (``.zarr``, one
    chunk per frame), a standalone OME-Zarr labels group (``.ome.zarr``: the label image
    ``sam2`` of one level), or a label image in an OME-Zarr image's own labels group
    (``IMAGE.ome.zarr/labels/NAME``: the image's axes, levels and transforms; nothing outside
    ``labels/`` changes). See :mod:`napari_sam2.io.ome_labels`.

    ``geometry``: the axes, pixel sizes and origin of the volume (those of the image it
    labels); an OME-Zarr output gets them as its scale and translation, a TIFF as OME-TIFF
    pixel sizes (where known), so viewers lay the labels over the image. ``fixed``: where on
    the image's other axes the volume lies (e.g. ``{"t": 3}`` for the Z stack of time 3).
    ``names`` and ``source``: each object's name and where it came from, kept as OME-Zarr
    ``properties`` (default names "object <id>").

    It is written under a temporary name beside ``path`` and takes the final name only when the
    block ends without error; a previous output at ``path`` is replaced in that last step and
    kept on any error. On any error (Ctrl+C included) the temporary file is removed. A TIFF's
    disk space is reserved up front, so a full disk fails at once as an OSError, not midway."""
    from . import ome_labels

    path = check_output(path, overwrite=overwrite)
    tmp = partial_path(path)
    image = image_of_labels(path)
    made = image is not None and not (path.parent / "zarr.json").exists()  # labels/, new
    _remove(tmp)
    try:
        if image is not None:
            path.parent.mkdir(exist_ok=True)
            array = ome_labels.new_in_image(tmp, image, path.name, shape, dtype, geometry, fixed)
        elif path.name.lower().endswith(".ome.zarr"):
            array = ome_labels.new_standalone(tmp, shape, dtype, geometry)
        elif path.suffix.lower() == ".zarr":
            import zarr

            array = zarr.open_array(
                str(tmp), mode="w", shape=shape, chunks=(1, *shape[1:]), dtype=dtype, **SPARSE
            )
        else:
            import tifffile

            meta = tiff_metadata(geometry) if geometry is not None else {}
            array = tifffile.memmap(
                tmp,
                shape=shape,
                dtype=dtype,
                photometric="minisblack",
                extratags=[(MARK_TAG, "s", 0, MARK, True)],
                **meta,
            )
            _reserve(tmp)
        yield array
        if isinstance(array, np.memmap):
            array.flush()
            del array
        elif isinstance(array, ome_labels.LabelVolume):  # the mark: on the output's root
            array.finish(names, source, _mark(shape) if image is not None else {})
            if image is None:
                _mark_zarr(tmp, shape)
        else:
            _mark_zarr(tmp, shape)
        _replace(tmp, path)
        if image is not None:
            ome_labels.list_label(path.parent, path.name)
            made = False
    finally:
        _remove(tmp)
        if made and path.parent.is_dir() and not any(path.parent.iterdir()):
            path.parent.rmdir()


def output_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The shape of a label volume that :func:`label_output` wrote: a TIFF, a zarr array, or
    the label image of an OME-Zarr labels group."""
    path = Path(path)
    if is_zarr_output(path):
        import zarr

        node = zarr.open(str(path), mode="r")
        if not hasattr(node, "shape"):
            return _group_shape(node)
        return tuple(node.shape)
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return tuple(tif.series[0].shape)


def _group_shape(node) -> tuple[int, ...]:
    """The (N, Y, X) shape of an OME-Zarr labels output: as its mark says (a label image in an
    image has the image's axes), else that of the standalone group's label image."""
    shape = node.attrs.get(MARK_ATTR, {}).get("shape")
    if shape is not None:
        return tuple(int(s) for s in shape)
    return tuple(node[f"{LABEL_NAME}/0"].shape)


def _mark(shape) -> dict:
    return {MARK_ATTR: {"labels": "complete", "shape": [int(s) for s in shape]}}


def _mark_zarr(path: Path, shape) -> None:
    import zarr

    node = zarr.open(str(path), mode="r+")
    node.attrs.update(_mark(shape))


def output_state(path: str | os.PathLike, shape: tuple[int, ...]) -> str:
    """What is at ``path``, for ``--resume``: "missing"; "complete" (a label volume that
    napari-sam2 marked as its own, of ``shape``, all its data in the file); "incomplete" (ours,
    but of another shape, or a TIFF whose data were cut short); or "foreign" (not ours, or
    unreadable: nothing proves it may be replaced)."""
    path = Path(path)
    if not path.exists():
        return "missing"
    try:
        if is_zarr_output(path):
            import zarr

            node = zarr.open(str(path), mode="r")
            if node.attrs.get(MARK_ATTR, {}).get("labels") != "complete":
                return "foreign"
            found = tuple(node.shape) if hasattr(node, "shape") else _group_shape(node)
            return "complete" if found == tuple(shape) else "incomplete"
        import tifffile

        with tifffile.TiffFile(path) as tif:
            tag = tif.pages.first.tags.get(MARK_TAG)
            if tag is None or tag.value != MARK:
                return "foreign"
            series = tif.series[0]
            if tuple(series.shape) != tuple(shape):
                return "incomplete"
            offset = series.dataoffset
            end = None if offset is None else offset + series.size * series.dtype.itemsize
            if end is None or end > os.path.getsize(path):
                return "incomplete"  # cut short: its last frames are not in the file
            return "complete"
    except Exception:  # unreadable: nothing proves it is ours
        return "foreign"


def partial_path(path: str | os.PathLike) -> Path:
    """The temporary name an output at ``path`` is written under until it is complete."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def pieces_folder(path: str | os.PathLike) -> Path:
    """The folder beside an output at ``path`` where tasks put the pieces it is assembled
    from (the object groups of one stack tracked on several workers)."""
    path = Path(path)
    return path.with_name(f".{path.name}.objects")


def discard_partial(path: str | os.PathLike) -> None:
    """Remove what an interrupted writer (a killed process, a cancelled cluster task) left of
    the output at ``path``: its temporary file and its pieces; a complete output stays."""
    _remove(partial_path(path))
    _remove(pieces_folder(path))


def _reserve(path: Path) -> None:
    """Allocate a (sparse) file's blocks now: writing through a memory map into a file on a
    full disk would kill the process (SIGBUS) instead of raising an error."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise
            # EOPNOTSUPP / EINVAL: the filesystem cannot reserve space; write as before.


def _replace(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path``, replacing what is there only once the move can succeed."""
    if not path.is_dir():
        os.replace(tmp, path)  # atomic for files, even over an existing one
        return
    backup = path.with_name(f".{path.name}.previous")
    _remove(backup)
    os.replace(path, backup)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(backup, path)
        raise
    _remove(backup)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def label_counts(labels, ids=None, frames_read=None) -> dict[int, tuple[int, int]]:
    """Per label value found (or per id of ``ids``, found or not): (voxels, frames where it
    appears), reading one frame at a time: every frame, or only ``frames_read`` (those that
    were written; the others are known to be 0). Memory is per label present, whatever the
    ids' size (ids near 2**32 are fine)."""
    voxels: dict[int, int] = {int(i): 0 for i in ids or ()}
    frames = dict(voxels)
    for t in range(labels.shape[0]) if frames_read is None else frames_read:
        frame = np.asarray(labels[t]).ravel()
        if frame.dtype.itemsize <= 2 and frame.dtype.kind == "u":
            counts = np.bincount(frame, minlength=1)
            values = np.flatnonzero(counts)
            counts = counts[values]
        else:
            values, counts = np.unique(frame, return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist()):
            if value == 0:
                continue
            voxels[value] = voxels.get(value, 0) + count
            frames[value] = frames.get(value, 0) + 1
    return {i: (voxels[i], frames[i]) for i in sorted(voxels)}
