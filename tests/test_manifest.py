"""The npe2 manifest is valid and its sample data providers return what they promise."""

from pathlib import Path

import numpy as np
import pytest
from npe2 import PluginManifest

import napari_sam2
from napari_sam2._sample_data import make_sample_stack, make_sample_timelapse, synthetic_cells

MANIFEST = Path(napari_sam2.__file__).parent / "napari.yaml"


def test_manifest_validates():
    manifest = PluginManifest.from_file(MANIFEST)
    assert manifest.name == "napari-sam2"
    assert manifest.display_name == "SAM 2"
    commands = {command.id: command.python_name for command in manifest.contributions.commands}
    samples = {
        "napari-sam2.sample_stack": "napari_sam2._sample_data:make_sample_stack",
        "napari-sam2.sample_timelapse": "napari_sam2._sample_data:make_sample_timelapse",
        "napari-sam2.sample_lineage": "napari_sam2._sample_lineage:make_sample_lineage",
    }
    widget = {"napari-sam2.widget": "napari_sam2._qt.widget:SAM2Widget"}
    writer = {"napari-sam2.write_labels": "napari_sam2._writer:write_labels"}
    assert commands == {**samples, **widget, **writer}
    assert [str(c.value) for c in manifest.categories] == ["Segmentation", "Annotation"]
    [write] = manifest.contributions.writers
    assert write.command in writer and write.layer_types == ["labels"]
    assert set(write.filename_extensions) == {".ome.zarr", ".tif", ".tiff", ".zarr"}
    menu = manifest.contributions.menus["napari/layers/segment"]
    assert [m.command for m in menu] == list(widget)
    assert {sample.command for sample in manifest.contributions.sample_data} == set(samples)
    assert [w.command for w in manifest.contributions.widgets] == list(widget)
    # napari's menu reads "<widget> (<plugin>)": "Segment and track (SAM 2)", not "SAM 2 (SAM 2)"
    assert [w.display_name for w in manifest.contributions.widgets] == ["Segment and track"]


def test_widget_command_resolves_without_importing_qt_at_package_import():
    """napari imports the widget module only when the widget is opened; the package itself
    (and its engine) never imports Qt."""
    import subprocess
    import sys

    code = (
        "import sys, napari_sam2; "
        "bad = [m for m in ('qtpy', 'PyQt6', 'magicgui', 'napari') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    from napari_sam2._qt.widget import SAM2Widget

    assert callable(SAM2Widget)


def test_manifest_is_found_through_the_entry_point():
    # The installed package announces the manifest under napari's entry point group.
    manifest = PluginManifest.from_distribution("napari-sam2")
    assert manifest.name == "napari-sam2"


@pytest.mark.parametrize(
    ("make_sample", "name", "scale"),
    [
        (make_sample_stack, "SAM2 sample: 3D stack", (4.0, 1.0, 1.0)),
        (make_sample_timelapse, "SAM2 sample: time-lapse", (1.0, 1.0, 1.0)),
    ],
)
def test_sample_layer_data(make_sample, name, scale):
    layers = make_sample()
    assert len(layers) == 1
    data, kwargs, layer_type = layers[0]
    assert layer_type == "image"
    assert kwargs["name"] == name
    assert tuple(kwargs["scale"]) == scale
    assert data.ndim == 3 and data.shape[1:] == (192, 256)
    assert data.dtype == np.uint16
    # Deterministic: the same call gives the same pixels.
    assert np.array_equal(make_sample()[0][0], data)


def test_synthetic_cells_are_brighter_than_background():
    frames = synthetic_cells(n_frames=6, seed=3)
    assert frames.shape == (6, 192, 256)
    assert frames.dtype == np.uint16
    for frame in frames:
        background = np.median(frame)
        assert 300 < background < 500
        cells = frame[frame > background + 500]
        assert cells.size > 0.03 * frame.size  # five cells cover a few percent of the frame
        assert 1500 < np.median(cells) < 4500
    assert np.array_equal(frames, synthetic_cells(n_frames=6, seed=3))
    assert not np.array_equal(frames, synthetic_cells(n_frames=6, seed=4))


def test_synthetic_cells_move_over_time():
    frames = synthetic_cells(n_frames=24, seed=0).astype(np.float64)
    first, last = frames[0] > 1000, frames[-1] > 1000
    overlap = np.count_nonzero(first & last) / np.count_nonzero(first | last)
    assert overlap < 0.8


def test_synthetic_cells_argument_checks():
    with pytest.raises(ValueError, match="n_frames"):
        synthetic_cells(n_frames=0)
    with pytest.raises(ValueError, match="shape"):
        synthetic_cells(shape=(8, 8))
    assert synthetic_cells(n_frames=2, n_cells=0, dtype=np.float32).dtype == np.float32


@pytest.mark.parametrize("name", ["cells.ome.zarr", "cells.tif"])
def test_save_layers_writes_labels_with_their_scale_and_translation(tmp_path, name):
    """File > Save Layers through the manifest's writer: a Labels layer's data, pixel sizes and
    offset; the OME-Zarr validates with ome-zarr-models."""
    import napari
    import zarr
    from ome_zarr_models import open_ome_zarr
    from ome_zarr_models.v05.labels import Labels

    from napari_sam2.io import open_stack

    data = np.zeros((3, 16, 20), np.uint16)
    data[1, 4:9, 5:12] = 7
    layer = napari.layers.Labels(
        data, scale=(2.0, 0.5, 0.25), translate=(0.0, 10.0, 20.0), units="micrometer", name="c"
    )
    from napari.plugins import _initialize_plugins

    _initialize_plugins()  # napari's plugin manager finds this manifest by its entry point
    path = tmp_path / name
    written = napari.save_layers(str(path), [layer], plugin="napari-sam2")
    assert [Path(p) for p in written] == [path]
    stack = open_stack(path / "sam2" if name.endswith(".zarr") else path)
    try:
        frames = np.stack([np.asarray(stack.frames[t]) for t in range(stack.num_frames)])
        np.testing.assert_array_equal(frames, data)
        assert stack.geometry.sizes == (2.0, 0.5, 0.25)
    finally:
        stack.close()
    if name.endswith(".ome.zarr"):
        group = zarr.open_group(str(path), mode="r")
        assert isinstance(open_ome_zarr(group), Labels)
        ms = dict(group["sam2"].attrs)["ome"]["multiscales"][0]
        assert ms["datasets"][0]["coordinateTransformations"][1] == {
            "type": "translation",
            "translation": [0.0, 10.0, 20.0],
        }
        assert [a.get("unit") for a in ms["axes"]] == ["micrometer"] * 3
