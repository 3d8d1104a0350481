"""OME-Zarr (NGFF 0.5) labels, validated with ome-zarr-models and read back with ome-zarr's
Reader: written into an image's own labels group (its levels, axes and transforms; nothing
outside labels/ changed) or standalone."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr_models import open_ome_zarr
from ome_zarr_models.v05.image import Image
from ome_zarr_models.v05.labels import Labels
from test_cli import FAST, moving_disc, run

from napari_sam2 import weights
from napari_sam2.io import label_output, open_stack, output_state

CLICK = "frame,obj_id,row,col,label\n0,1,20,15,1\n0,4,5,50,1\n"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))


def ome_image(path, data, axes="zyx", scale=(2.0, 0.5, 0.25), **kw):
    from ome_zarr.writer import write_image

    root = zarr.open_group(str(path), mode="w")
    write_image(
        data,
        root,
        axes=axes,
        scale=dict(zip(axes, scale)),
        axes_units={a: "micrometer" for a in axes if a in "zyx"},
        **kw,
    )
    return root


def fingerprint(folder, skip="labels"):
    """{relative path: sha256} of every file under ``folder`` outside ``skip``/."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).parts[0] != skip
    }


def segment(image, out, checkpoint, tmp_path, capsys, *extra):
    csv = tmp_path / "p.csv"
    csv.write_text(CLICK)
    argv = ["segment", image, "-p", csv, "-o", out, "--checkpoint", checkpoint, *FAST, *extra]
    return run(argv, capsys)


@pytest.mark.handled
def test_labels_written_into_the_image_validate_with_its_levels(
    random_tiny_checkpoint, tmp_path, capsys
):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    image = tmp_path / "cells.ome.zarr"
    data = moving_disc(4)
    ome_image(image, data)
    before = fingerprint(image)
    code, _, stderr = segment(
        image, image / "labels" / "cells", random_tiny_checkpoint, tmp_path, capsys
    )
    assert code == 0, stderr
    assert fingerprint(image) == before  # the image's arrays and metadata: byte-identical
    assert sorted(p.name for p in (image / "labels").iterdir()) == ["cells", "zarr.json"]

    model = open_ome_zarr(zarr.open_group(str(image), mode="r"))
    assert isinstance(model, Image)  # validates, labels and their level count included
    assert model.labels.label_paths == ["cells"]
    meta = dict(zarr.open_group(str(image / "labels" / "cells"), mode="r").attrs)["ome"]
    image_ms = dict(zarr.open_group(str(image), mode="r").attrs)["ome"]["multiscales"][0]
    assert meta["multiscales"][0]["axes"] == image_ms["axes"]
    assert meta["multiscales"][0]["datasets"] == image_ms["datasets"]  # scale + translation
    label = meta["image-label"]
    assert [c["label-value"] for c in label["colors"]] == [1, 4]
    assert [(p["label-value"], p["name"]) for p in label["properties"]] == [
        (1, "object 1"),
        (4, "object 4"),
    ]
    assert all("p.csv" in p["source"] for p in label["properties"])

    # every level: the image's shape, dimension_names, label values never mixed
    root = zarr.open_group(str(image), mode="r")
    full = np.asarray(root["labels/cells"][image_ms["datasets"][0]["path"]])
    for dataset in image_ms["datasets"]:
        level = root["labels/cells"][dataset["path"]]
        assert level.shape == root[dataset["path"]].shape
        assert level.metadata.dimension_names == ("z", "y", "x")
        assert set(np.unique(level[:])) <= set(np.unique(full))
    # the same labels as a plain TIFF segmentation of the same data
    tifffile.imwrite(tmp_path / "cells.tif", data, photometric="minisblack")
    code, _, stderr = segment(
        tmp_path / "cells.tif", tmp_path / "plain.tif", random_tiny_checkpoint, tmp_path, capsys
    )
    assert code == 0, stderr
    np.testing.assert_array_equal(full, tifffile.imread(tmp_path / "plain.tif"))
    assert full.any()
    level1 = np.asarray(root["labels/cells"][image_ms["datasets"][1]["path"]])
    np.testing.assert_array_equal(level1, full[:, 1::2, 1::2])  # nearest, not averaged

    # ome-zarr's Reader: the image with its labels, at the image's scale
    nodes = list(Reader(parse_url(str(image)))())
    named = {n.metadata.get("name"): n for n in nodes}
    assert "cells" in named, [n.metadata for n in nodes]
    transforms = named["cells"].metadata["coordinateTransformations"][0]
    assert transforms[0] == {"type": "scale", "scale": [2.0, 0.5, 0.25]}
    assert len(named["cells"].data) == len(image_ms["datasets"])
    # --resume knows the output as complete
    assert output_state(image / "labels" / "cells", full.shape) == "complete"


@pytest.mark.handled
def test_a_second_label_image_keeps_the_first(tmp_path):
    image = tmp_path / "cells.ome.zarr"
    ome_image(image, moving_disc(2), scale_factors=())
    geometry = open_stack(image).label_geometry
    for name, value in (("a", 1), ("b", 2)):
        with label_output(image / "labels" / name, (2, 48, 64), geometry=geometry) as out:
            out[0] = np.full((48, 64), value, np.uint16)
    model = open_ome_zarr(zarr.open_group(str(image), mode="r"))
    assert model.labels.label_paths == ["a", "b"]


@pytest.mark.refused
def test_a_failed_write_into_the_image_leaves_it_unchanged(tmp_path):
    image = tmp_path / "cells.ome.zarr"
    ome_image(image, moving_disc(2), scale_factors=())
    before = sorted(p.relative_to(image) for p in image.rglob("*"))
    with pytest.raises(RuntimeError, match="stop"):
        with label_output(image / "labels" / "cells", (2, 48, 64)) as out:
            out[0] = np.ones((48, 64), np.uint16)
            raise RuntimeError("stop")
    assert sorted(p.relative_to(image) for p in image.rglob("*")) == before


@pytest.mark.refused
def test_labels_into_an_ngff_04_image_refused_before_the_model_loads(
    random_tiny_checkpoint, tmp_path, capsys
):
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    image = tmp_path / "v04.ome.zarr"
    root = zarr.open_group(str(image), mode="w", zarr_format=2)
    write_image(moving_disc(2), root, fmt=FormatV04(), axes="zyx", scale_factors=())
    before = fingerprint(image, skip="")
    code, _, stderr = segment(
        image, image / "labels" / "cells", random_tiny_checkpoint, tmp_path, capsys
    )
    assert code == 2
    assert "NGFF 0.4" in stderr and "labels.ome.zarr" in stderr
    assert fingerprint(image, skip="") == before and not (image / "labels").exists()


@pytest.mark.refused
def test_other_outputs_inside_the_image_are_still_refused(random_tiny_checkpoint, tmp_path, capsys):
    image = tmp_path / "cells.ome.zarr"
    ome_image(image, moving_disc(2), scale_factors=())
    code, _, stderr = segment(image, image / "labels.tif", random_tiny_checkpoint, tmp_path, capsys)
    assert code == 2 and "inside the input" in stderr


@pytest.mark.handled
def test_standalone_output_validates_and_keeps_the_translation(
    random_tiny_checkpoint, tmp_path, capsys
):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    image = tmp_path / "offset.ome.zarr"
    ome_image(image, moving_disc(3), scale_factors=())
    root = zarr.open_group(str(image), mode="r+")
    ome = dict(root.attrs["ome"])
    ms = ome["multiscales"][0]
    ms["datasets"][0]["coordinateTransformations"] = [
        {"type": "scale", "scale": [2.0, 0.5, 0.25]},
        {"type": "translation", "translation": [10.0, 100.0, 200.0]},
    ]
    root.attrs["ome"] = ome
    out = tmp_path / "labels.ome.zarr"
    code, _, stderr = segment(image, out, random_tiny_checkpoint, tmp_path, capsys)
    assert code == 0, stderr
    model = open_ome_zarr(zarr.open_group(str(out), mode="r"))
    assert isinstance(model, Labels) and model.label_paths == ["sam2"]
    group = zarr.open_group(str(out), mode="r")
    assert group["sam2/0"].metadata.dimension_names == ("z", "y", "x")
    nodes = [n for n in Reader(parse_url(str(out)))() if n.metadata.get("name") == "sam2"]
    assert nodes[0].metadata["coordinateTransformations"][0] == [
        {"type": "scale", "scale": [2.0, 0.5, 0.25]},
        {"type": "translation", "translation": [10.0, 100.0, 200.0]},
    ]
    assert nodes[0].metadata["properties"][1]["name"] == "object 1"
