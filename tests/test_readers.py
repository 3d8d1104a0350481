"""Stacks beyond local TIFF / zarr: bioformats2raw layouts, remote OME-Zarr over HTTP (a real
server on 127.0.0.1), and formats read through bioio (the ``[formats]`` extra)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from local_server import LocalServer

from napari_sam2.io import InputError, check_output, open_stack


def _image(group, data, scale=(2.0, 0.5, 0.5)) -> None:
    from ome_zarr.writer import write_image

    write_image(
        data,
        group,
        axes="zyx",
        scale=dict(zip("zyx", scale)),
        axes_units={a: "micrometer" for a in "zyx"},
        scale_factors=(),
    )


def _data() -> np.ndarray:
    return (np.arange(3 * 20 * 24) % 251).astype(np.uint8).reshape(3, 20, 24)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_bioformats2raw_layout_opens_as_its_first_image(tmp_path, zarr_format):
    """A bioformats2raw root (``bioformats2raw.layout`` on the root, the image in ``0/``, OME-XML
    in ``OME/``) opens as image 0, with its pixel sizes."""
    root_path = tmp_path / "plate.zarr"
    root = zarr.open_group(str(root_path), mode="w", zarr_format=zarr_format)
    layout = {"bioformats2raw.layout": 3}
    root.attrs.update(layout if zarr_format == 2 else {"ome": {"version": "0.5", **layout}})
    ome = root.create_group("OME")
    ome.attrs["series"] = ["0"]
    data = _data()
    _image(root.create_group("0"), data)
    stack = open_stack(root_path)
    try:
        assert stack.shape == (3, 20, 24)
        assert stack.geometry.axes == "zyx" and stack.geometry.sizes == (2.0, 0.5, 0.5)
        assert np.array_equal(np.asarray(stack.frames[2]), data[2])
    finally:
        stack.close()


def test_bioformats2raw_layout_without_its_image_is_refused(tmp_path):
    root_path = tmp_path / "broken.zarr"
    root = zarr.open_group(str(root_path), mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    root.create_group("OME")
    with pytest.raises(InputError, match="bioformats2raw layout without its image 0/"):
        open_stack(root_path)


def _serve(server: LocalServer, folder: Path, name: str) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            server.files[f"{name}/{f.relative_to(folder).as_posix()}"] = f


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_remote_ome_zarr_over_http_reads_lazily_with_its_pixel_sizes(tmp_path, zarr_format):
    """An OME-Zarr image served over HTTP opens by URL: shape, pixel sizes and frames as on disk,
    each frame read when asked for (only the chunks of the frames read are fetched)."""
    folder = tmp_path / "img.ome.zarr"
    data = _data()
    _image(zarr.open_group(str(folder), mode="w", zarr_format=zarr_format), data)
    with LocalServer() as server:
        _serve(server, folder, "img.ome.zarr")
        url = server.url("img.ome.zarr")
        stack = open_stack(url)
        try:
            assert stack.path == url
            assert stack.shape == (3, 20, 24) and stack.geometry.sizes == (2.0, 0.5, 0.5)
            assert stack.geometry.units == ("micrometer",) * 3
            chunks = [n for n in server.hits if "/0/" in n or "/c/" in n]
            assert chunks == [], f"opening read pixel data: {chunks}"
            assert np.array_equal(np.asarray(stack.frames[1]), data[1])
        finally:
            stack.close()
        with pytest.raises(ValueError, match="read-only"):  # opened read-only
            stack.frames.data.array[0, 0, 0] = 1


def test_remote_url_that_is_not_there_is_a_clear_error(tmp_path):
    with LocalServer() as server:
        with pytest.raises(InputError, match="cannot open http://127.0.0.1"):
            open_stack(server.url("missing.ome.zarr"))


def test_a_url_input_is_never_taken_for_a_local_path_by_the_output_checks(tmp_path, monkeypatch):
    """``check_output`` with a URL input checks the output as a local path only: a local output
    is not a URL, nor inside or around one. (``Path(url)`` would make the URL the relative path
    ``https:/host/...`` in the current folder, and refuse an output there.)"""
    monkeypatch.chdir(tmp_path)
    url = "https://example.org/img.ome.zarr"
    local_twin = tmp_path / "https:" / "example.org" / "img.ome.zarr"
    local_twin.mkdir(parents=True)
    inside = local_twin / "labels.tif"
    assert check_output(inside, [url]) == inside
    assert check_output(tmp_path / "labels.tif", [url]) == tmp_path / "labels.tif"


class _Blocker:
    """A meta-path finder that makes ``names`` (and their submodules) unimportable."""

    def __init__(self, *names: str) -> None:
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


@pytest.fixture
def block(monkeypatch):
    def _block(*names: str) -> None:
        for name in list(sys.modules):
            if name.split(".")[0] in names:
                monkeypatch.delitem(sys.modules, name)
        monkeypatch.setattr(sys, "meta_path", [_Blocker(*names), *sys.meta_path])

    return _block


def test_s3_without_s3fs_names_the_package(block):
    block("s3fs")
    with pytest.raises(InputError, match=r"needs the package s3fs.*pip install s3fs"):
        open_stack("s3://bucket/img.ome.zarr")


def test_unknown_url_scheme_is_refused():
    with pytest.raises(InputError, match="cannot read ftp:// stacks"):
        open_stack("ftp://example.org/img.ome.zarr")


# --------------------------------------------------------------------------- bioio ([formats])
def test_czi_without_bioio_names_the_extra(block, tmp_path):
    block("bioio", "bioio_base")
    path = tmp_path / "cells.czi"
    path.write_bytes(b"ZISRAWFILE")
    extra = r'pip install "napari-sam2\[formats\]"'
    with pytest.raises(InputError, match=rf"\.czi files needs bioio.*{extra}"):
        open_stack(path)


def test_other_file_type_without_bioio_is_unsupported_and_names_the_extra(block, tmp_path):
    block("bioio", "bioio_base")
    path = tmp_path / "cells.oib"
    path.write_bytes(b"")
    with pytest.raises(InputError, match=r"unsupported file type.*napari-sam2\[formats\]"):
        open_stack(path)


def test_file_no_bioio_plugin_reads_is_a_clear_error(tmp_path):
    path = tmp_path / "cells.xyz"
    path.write_bytes(b"not an image")
    with pytest.raises(InputError, match=r"unsupported file type.*napari-sam2\[formats\]"):
        open_stack(path)


def test_bioio_reader_maps_axes_and_pixel_sizes_lazily(tmp_path):
    """An OME-TIFF read through bioio-ome-tiff (what the CZI, ND2 and LIF plugins hand over
    too: a TCZYX(S) dask array and physical pixel sizes): singletons dropped, channels last,
    Z/Y/X sizes in micrometres, the frames those of the file."""
    import tifffile

    from napari_sam2.io.stacks import _open_other

    data = (np.arange(4 * 2 * 20 * 24) % 251).astype(np.uint16).reshape(4, 2, 20, 24)
    path = tmp_path / "cells.ome.tif"
    meta = {"axes": "ZCYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0}
    tifffile.imwrite(path, data, ome=True, metadata=meta)
    array, axes, _, geometry = _open_other(path, known=True)
    assert axes == "ZYXC" and array.shape == (4, 20, 24, 2) and array.dtype == np.uint16
    assert geometry.axes == "zyxc" and geometry.sizes == (2.0, 0.5, 0.5, None)
    assert geometry.units == ("micrometer",) * 3 + (None,)
    assert np.array_equal(array[3], np.moveaxis(data[3], 0, -1))

    rgb = (np.arange(3 * 20 * 24 * 3) % 251).astype(np.uint8).reshape(3, 20, 24, 3)
    path = tmp_path / "rgb.ome.tif"
    tifffile.imwrite(path, rgb, ome=True, photometric="rgb", metadata={"axes": "TYXS"})
    array, axes, _, geometry = _open_other(path, known=True)
    assert axes == "TYXC" and array.shape == (3, 20, 24, 3)
    assert np.array_equal(array[1], rgb[1])
