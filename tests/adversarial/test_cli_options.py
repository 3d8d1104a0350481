"""Command-line options and files that used to end in "unexpected error, report it" or were
accepted beyond reason: each is now a clear exit 2 before the model (the runs name a checkpoint
that does not exist, so a check made too late would exit 3), or a bounded, announced choice."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile
from cli_helpers import FAST, NO_MODEL, run
from conftest import moving_disc, snapshot

refused = pytest.mark.refused
handled = pytest.mark.handled
pytestmark = pytest.mark.usefixtures("cli_env")


@pytest.fixture
def data(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", moving_disc(4), photometric="minisblack")
    (tmp_path / "p.csv").write_text("frame,obj_id,row,col\n0,1,15,20\n")
    return tmp_path / "s.tif", tmp_path / "p.csv"


@refused
@pytest.mark.parametrize("address", ["not an address", "tcp://head:99999", "tcp://:8786"])
def test_a_scheduler_that_is_no_address_exits_2_before_the_model(data, tmp_path, capsys, address):
    tif, csv = data
    before = snapshot(tmp_path)
    argv = ["segment", tif, "-p", csv, "-o", "out.tif", "--scheduler", address]
    code, err = run([*argv, *NO_MODEL, *FAST], capsys)
    assert code == 2, err
    assert f"--scheduler {address!r} is not a Dask scheduler address" in err
    assert "tcp://head:8786" in err and "unexpected" not in err
    assert snapshot(tmp_path) == before


@handled
def test_more_workers_than_cores_are_capped_at_the_cores(data, capsys):
    tif, csv = data
    cores = len(os.sched_getaffinity(0))
    argv = ["segment", tif, "-p", csv, "-o", "out.tif", "--workers", 1000 + cores]
    code, err = run([*argv, *NO_MODEL, *FAST], capsys)
    assert code == 3, err  # everything else was fine: it stopped at the missing checkpoint
    assert f"--workers {1000 + cores}: this machine has {cores} cores; starting {cores}" in err


@refused
@pytest.mark.parametrize("kind", ["text", "csv", "folder"])
def test_view_of_something_napari_cannot_open_exits_2_before_the_weights(
    tmp_path, capsys, monkeypatch, kind
):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")  # a display: the check that follows
    path = {"text": "notes.txt", "csv": "table.csv", "folder": "folder"}[kind]
    if kind == "text":
        (tmp_path / path).write_text("not an image\n")
    elif kind == "csv":
        np.savetxt(tmp_path / path, np.ones((3, 3)), delimiter=",")
    else:
        (tmp_path / path).mkdir()
    before = snapshot(tmp_path)
    code, err = run(["view", path, *NO_MODEL], capsys)
    assert code == 2, err
    assert f"{path}: napari cannot open it as an image" in err and "unexpected" not in err
    assert snapshot(tmp_path) == before


@handled
@pytest.mark.display  # napari's canvas needs OpenGL: under xvfb-run
def test_view_opens_an_image_napari_reads_in_the_viewer(
    data, monkeypatch, capsys, random_tiny_checkpoint
):
    """The file is read once, before the weights, and shown as its own layer."""
    import napari

    monkeypatch.setattr(napari, "run", lambda: None)  # do not block in the event loop
    tif, _ = data
    code, err = run(["view", tif, "--checkpoint", random_tiny_checkpoint], capsys)
    viewer = napari.current_viewer()
    try:
        assert code == 0, err
        assert [layer.name for layer in viewer.layers] == ["s"]
        np.testing.assert_array_equal(viewer.layers["s"].data, moving_disc(4))
    finally:
        viewer.close()


@handled
@pytest.mark.display  # napari's canvas needs OpenGL: under xvfb-run
def test_view_opens_the_lineage_sample_with_its_ground_truth_labels(
    monkeypatch, capsys, random_tiny_checkpoint
):
    """`view --sample lineage` shows the movie as an image and its ground truth as labels."""
    import napari

    monkeypatch.setattr(napari, "run", lambda: None)
    code, err = run(["view", "--sample", "lineage", "--checkpoint", random_tiny_checkpoint], capsys)
    viewer = napari.current_viewer()
    try:
        assert code == 0, err
        kinds = {layer.name: type(layer).__name__ for layer in viewer.layers}
        assert kinds == {
            "SAM2 sample: lineage": "Image",
            "SAM2 sample: lineage ground truth": "Labels",
        }
        truth = viewer.layers["SAM2 sample: lineage ground truth"].data
        assert truth.shape == viewer.layers["SAM2 sample: lineage"].data.shape
        assert truth.max() > 0
    finally:
        viewer.close()
