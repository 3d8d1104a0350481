"""OME-Zarr and OME-TIFF geometry through the command line: images with axes and pixel sizes
in, labels out that NGFF readers (ome-zarr-py) and tifffile read back with the same geometry."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr
from test_cli import FAST, moving_disc, run

from napari_sam2 import weights
from napari_sam2.io import open_stack

CLICK = "frame,obj_id,row,col,label\n0,1,20,15,1\n"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))


def test_ome_zarr_round_trip_keeps_the_geometry(random_tiny_checkpoint, tmp_path, capsys):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr.writer import write_image

    image = tmp_path / "cells.ome.zarr"
    root = zarr.open_group(str(image), mode="w")
    data = moving_disc(4)
    scale = [2.0, 0.5, 0.25]
    write_image(  # with a pyramid: we read its finest level
        data,
        root,
        axes="zyx",
        scale=dict(zip("zyx", scale)),
        axes_units=dict.fromkeys("zyx", "micrometer"),
    )
    csv = tmp_path / "p.csv"
    csv.write_text(CLICK)
    out = tmp_path / "cells_labels.ome.zarr"
    argv = ["segment", image, "-p", csv, "-o", out, "--checkpoint", random_tiny_checkpoint]
    code, _, stderr = run([*argv, *FAST], capsys)
    assert code == 0, stderr
    # the same data as a plain TIFF gives the same labels
    tifffile.imwrite(tmp_path / "cells.tif", data, photometric="minisblack")
    argv = ["segment", tmp_path / "cells.tif", "-p", csv, "-o", tmp_path / "plain.tif"]
    code, _, stderr = run([*argv, "--checkpoint", random_tiny_checkpoint, *FAST], capsys)
    assert code == 0, stderr

    nodes = list(Reader(parse_url(str(out)))())
    label = [n for n in nodes if n.metadata.get("name") == "sam2"]
    assert label, [n.metadata for n in nodes]
    meta = label[0].metadata
    assert [a["name"] for a in meta["axes"]] == ["z", "y", "x"]
    assert [a.get("unit") for a in meta["axes"]] == ["micrometer"] * 3
    transforms = meta["coordinateTransformations"][0]
    assert transforms == [{"type": "scale", "scale": scale}]
    assert label[0].visible is not None  # a label image napari-ome-zarr shows
    volume = np.asarray(label[0].data[0])
    np.testing.assert_array_equal(volume, tifffile.imread(tmp_path / "plain.tif"))
    assert volume.any()
    # and we read it back as a stack with the image's geometry
    stack = open_stack(image)
    try:
        assert stack.geometry.axes == "zyx" and stack.geometry.sizes == tuple(scale)
    finally:
        stack.close()


def test_tiff_output_carries_the_pixel_size_of_the_input(random_tiny_checkpoint, tmp_path, capsys):
    tif = tmp_path / "fiji.tif"
    tifffile.imwrite(
        tif,
        moving_disc(3),
        imagej=True,
        resolution=(1 / 0.325, 1 / 0.325),
        metadata={"spacing": 1.5, "unit": "um", "axes": "ZYX"},
    )
    csv = tmp_path / "p.csv"
    csv.write_text(CLICK)
    out = tmp_path / "labels.tif"
    code, _, stderr = run(
        ["segment", tif, "-p", csv, "-o", out, "--checkpoint", random_tiny_checkpoint, *FAST],
        capsys,
    )
    assert code == 0, stderr
    labels = open_stack(out)
    try:
        geometry = labels.geometry
    finally:
        labels.close()
    assert geometry.axes == "zyx"
    assert geometry.sizes == pytest.approx((1.5, 0.325, 0.325))
    assert set(geometry.units) == {"µm"}
    with tifffile.TiffFile(out) as f:
        assert f.is_ome and f.series[0].shape == (3, 48, 64)


def test_ngff_04_five_d_image_with_channels(random_tiny_checkpoint, tmp_path, capsys):
    """NGFF 0.4 (zarr v2), axes t, c, z, y, x with one time point and two channels: read as a
    (Z, Y, X, C) stack, the channel picked with --channel, the labels in z, y, x with the
    image's z/y/x scale."""
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    disc = moving_disc(4)
    data = np.stack([np.full_like(disc, 700), disc])[None]  # (t=1, c=2, z=4, y, x)
    image = tmp_path / "v04.ome.zarr"
    root = zarr.open_group(str(image), mode="w", zarr_format=2)
    write_image(
        data,
        root,
        fmt=FormatV04(),
        axes="tczyx",
        scale={"t": 1.0, "c": 1.0, "z": 3.0, "y": 0.4, "x": 0.4},
        axes_units={"t": "second", "z": "micrometer", "y": "micrometer", "x": "micrometer"},
        scale_factors=(),
    )
    assert "multiscales" in root.attrs  # 0.4: not nested under "ome"
    stack = open_stack(image)
    try:
        assert stack.shape == (4, 48, 64, 2)
        assert stack.geometry.axes == "zyxc" and stack.geometry.sizes[:3] == (3.0, 0.4, 0.4)
    finally:
        stack.close()
    csv = tmp_path / "p.csv"
    csv.write_text(CLICK)
    out = tmp_path / "labels.ome.zarr"
    argv = ["segment", image, "-p", csv, "-o", out, "--channel", 1]
    code, _, stderr = run([*argv, "--checkpoint", random_tiny_checkpoint, *FAST], capsys)
    assert code == 0, stderr
    labels = zarr.open_group(str(out), mode="r")
    meta = dict(labels["sam2"].attrs)
    ms = meta.get("multiscales") or meta["ome"]["multiscales"]
    assert [a["name"] for a in ms[0]["axes"]] == ["z", "y", "x"]
    assert ms[0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [3.0, 0.4, 0.4]
    # the labels are those of channel 1 alone, given as a plain stack
    tifffile.imwrite(tmp_path / "c1.tif", disc, photometric="minisblack")
    argv = ["segment", tmp_path / "c1.tif", "-p", csv, "-o", tmp_path / "c1_labels.tif"]
    code, _, stderr = run([*argv, "--checkpoint", random_tiny_checkpoint, *FAST], capsys)
    assert code == 0, stderr
    volume = np.asarray(labels["sam2/0"])
    assert volume.any()
    np.testing.assert_array_equal(volume, tifffile.imread(tmp_path / "c1_labels.tif"))
