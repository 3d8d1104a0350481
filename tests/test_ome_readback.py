"""Every OME-Zarr napari-sam2 writes (``-o IMAGE.ome.zarr/labels/NAME``, a standalone
``-o out.ome.zarr``, napari's *Save Layers* through our writer) opens in the two readers other
tools rely on: ome-zarr's Reader and napari-ome-zarr (napari's reader plugin, found through its
manifest as napari finds it), as an image with its labels where there is an image, each at the
right scale and offset, with the label values we wrote.

napari-ome-zarr 0.10 applies only the first transform of a level (the scale) and drops the
translation, the image's as well as ours: there the tests check that the labels lie exactly over
their image, as that reader places both."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from test_cli import FAST, moving_disc, run
from test_ome_labels import ome_image

from napari_sam2 import weights

CLICK = "frame,obj_id,row,col,label\n0,1,20,15,1\n0,4,5,50,1\n"
SCALE = (2.0, 0.5, 0.25)
OFFSET = (10.0, 100.0, 200.0)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))


def offset_image(path, **kw) -> None:
    """An OME-Zarr image (NGFF 0.5) of the moving disc at SCALE, every level moved by OFFSET."""
    ome_image(path, moving_disc(4), scale=SCALE, **kw)
    root = zarr.open_group(str(path), mode="r+")
    ome = dict(root.attrs["ome"])
    for dataset in ome["multiscales"][0]["datasets"]:
        transforms = dataset["coordinateTransformations"]
        shift = transforms[1]["translation"] if len(transforms) > 1 else [0.0, 0.0, 0.0]
        dataset["coordinateTransformations"] = [
            transforms[0],
            {"type": "translation", "translation": [a + b for a, b in zip(shift, OFFSET)]},
        ]
    root.attrs["ome"] = ome


def segment(image, out, checkpoint, tmp_path, capsys) -> None:
    (tmp_path / "p.csv").write_text(CLICK)
    argv = ["segment", image, "-p", tmp_path / "p.csv", "-o", out, "--checkpoint", checkpoint]
    code, _, stderr = run([*argv, *FAST], capsys)
    assert code == 0, stderr


def ome_zarr_nodes(path) -> dict:
    """ome-zarr's Reader on ``path``: {node name: node}."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    return {n.metadata.get("name"): n for n in Reader(parse_url(str(path)))()}


def napari_layers(path) -> list:
    """The layers napari makes of ``path`` with the napari-ome-zarr plugin."""
    import napari
    from napari.plugins import _initialize_plugins
    from napari.plugins.io import read_data_with_plugins

    _initialize_plugins()  # npe2 finds napari-ome-zarr's manifest through its entry point
    data, plugin = read_data_with_plugins([str(path)], plugin="napari-ome-zarr")
    assert plugin == "napari-ome-zarr" and data, f"napari-ome-zarr read nothing of {path}"
    return [napari.layers.Layer.create(*layer) for layer in data]


def placed(layer) -> tuple[np.ndarray, np.ndarray]:
    """Where ``layer`` puts its first voxel and its voxel size, in world coordinates."""
    origin = np.asarray(layer.data_to_world((0, 0, 0)))
    return origin, np.asarray(layer.data_to_world((1, 1, 1))) - origin


@pytest.mark.handled
def test_labels_in_the_image_open_with_it_in_both_readers(random_tiny_checkpoint, tmp_path, capsys):
    image = tmp_path / "cells.ome.zarr"
    offset_image(image)  # a pyramid of 5 levels
    segment(image, image / "labels" / "cells", random_tiny_checkpoint, tmp_path, capsys)
    labels = np.asarray(zarr.open_group(str(image / "labels" / "cells"), mode="r")["s0"])
    assert np.unique(labels).tolist() == [0, 1, 4]

    nodes = ome_zarr_nodes(image)
    assert set(nodes) == {"image", "cells", None}  # the image, its labels group, the labels
    for node in (nodes["image"], nodes["cells"]):
        assert len(node.data) == 5
        assert node.metadata["coordinateTransformations"][0] == [
            {"type": "scale", "scale": list(SCALE)},
            {"type": "translation", "translation": list(OFFSET)},
        ]
    np.testing.assert_array_equal(np.asarray(nodes["cells"].data[0]), labels)

    # napari-ome-zarr, from the image or from the labels themselves: the image and its labels,
    # every level, at the image's voxel size and laid exactly over it
    for path in (image, image / "labels" / "cells"):
        layers = napari_layers(path)
        assert [type(layer).__name__ for layer in layers] == ["Image", "Labels"]
        image_layer, labels_layer = layers
        assert labels_layer.multiscale and len(labels_layer.data) == len(image_layer.data) == 5
        np.testing.assert_array_equal(np.asarray(labels_layer.data[0]), labels)
        for a, b in zip(placed(labels_layer), placed(image_layer)):
            np.testing.assert_allclose(a, b)
        np.testing.assert_allclose(placed(labels_layer)[1], SCALE)
        assert tuple(labels_layer.units) == tuple(image_layer.units) == ("micrometer",) * 3
        assert labels_layer.properties["name"].tolist() == ["object 1", "object 4"]


@pytest.mark.handled
def test_a_standalone_output_opens_as_labels_in_both_readers(
    random_tiny_checkpoint, tmp_path, capsys
):
    image = tmp_path / "offset.ome.zarr"
    offset_image(image, scale_factors=())
    out = tmp_path / "labels.ome.zarr"
    segment(image, out, random_tiny_checkpoint, tmp_path, capsys)
    labels = np.asarray(zarr.open_group(str(out), mode="r")["sam2/0"])
    assert np.unique(labels).tolist() == [0, 1, 4]

    nodes = ome_zarr_nodes(out)
    assert "sam2" in nodes
    assert nodes["sam2"].metadata["coordinateTransformations"][0] == [
        {"type": "scale", "scale": list(SCALE)},
        {"type": "translation", "translation": list(OFFSET)},
    ]
    np.testing.assert_array_equal(np.asarray(nodes["sam2"].data[0]), labels)

    (layer,) = napari_layers(out)  # no image in it: the labels alone
    assert type(layer).__name__ == "Labels"
    np.testing.assert_array_equal(
        np.asarray(layer.data[0] if layer.multiscale else layer.data), labels
    )
    (image_layer,) = napari_layers(image)  # the image it was made from, opened the same way
    for a, b in zip(placed(layer), placed(image_layer)):
        np.testing.assert_allclose(a, b)  # laid exactly over it
    np.testing.assert_allclose(placed(layer)[1], SCALE)
    assert tuple(layer.units) == ("micrometer",) * 3


@pytest.mark.handled
def test_save_layers_round_trips_through_napari_ome_zarr(tmp_path):
    """A Labels layer saved with napari-sam2's writer comes back from napari-ome-zarr with its
    data, voxel size and units (its offset is in the file, for ome-zarr's Reader: that plugin
    drops translations)."""
    import napari
    from napari.plugins import _initialize_plugins

    data = np.zeros((3, 16, 20), np.uint16)
    data[1, 4:9, 5:12] = 7
    data[2, 0:3, 0:3] = 2
    layer = napari.layers.Labels(
        data, scale=SCALE, translate=OFFSET, units="micrometer", name="cells"
    )
    _initialize_plugins()
    path = tmp_path / "saved.ome.zarr"
    napari.save_layers(str(path), [layer], plugin="napari-sam2")
    (back,) = napari_layers(path)
    assert type(back).__name__ == "Labels"
    np.testing.assert_array_equal(np.asarray(back.data[0] if back.multiscale else back.data), data)
    np.testing.assert_allclose(placed(back)[1], SCALE)
    assert tuple(back.units) == ("micrometer",) * 3
    assert ome_zarr_nodes(path)["sam2"].metadata["coordinateTransformations"][0] == [
        {"type": "scale", "scale": list(SCALE)},
        {"type": "translation", "translation": list(OFFSET)},
    ]
