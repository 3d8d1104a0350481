"""Every example runs end to end on the package's sample data with a random-weight checkpoint
in the official format (the real network, no mocks)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import tifffile

EXAMPLES = Path(__file__).parent.parent / "examples"


def run_example(name: str, args: list, monkeypatch) -> None:
    """Run examples/<name> as a script with ``args``; it must exit with status 0."""
    monkeypatch.setattr(sys, "argv", [name, *map(str, args)])
    try:
        runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    except SystemExit as e:
        assert e.code in (0, None)


def test_segment_image_example(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "mask.tif"
    args = ["--checkpoint", tiny_checkpoint, "--output", out, "--device", "cpu"]
    run_example("segment_image.py", args, monkeypatch)
    mask = tifffile.imread(out)
    assert mask.dtype == np.uint8 and mask.shape == (192, 256)
    assert set(np.unique(mask)) <= {0, 1}
    printed = capsys.readouterr().out
    assert "click at (row=" in printed and "predicted IoU" in printed


def test_track_timelapse_example(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "labels.tif"
    args = ["--checkpoint", tiny_checkpoint, "--output", out, "--device", "cpu", "--frames", 3]
    run_example("track_timelapse.py", [*args, "--image-size", 256], monkeypatch)
    labels = tifffile.imread(out)
    assert labels.shape == (3, 192, 256) and labels.dtype == np.uint16
    printed = capsys.readouterr().out
    n_cells = int(printed.split("uint16: ")[1].split(" cells")[0])
    assert n_cells >= 3  # the sample has several separate cells
    assert set(np.unique(labels)) <= set(range(n_cells + 1))
    assert "tracking 3/3 frames" in printed


def test_batch_folder_example(random_tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from test_cli import moving_disc

    data = tmp_path / "data"
    data.mkdir()
    for name, frames in (("first", 3), ("second", 2)):
        tifffile.imwrite(data / f"{name}.tif", moving_disc(frames), photometric="minisblack")
        (data / f"{name}.csv").write_text("frame,obj_id,row,col,label\n0,1,20,15,1\n0,3,5,5,1\n")
    tifffile.imwrite(data / "no_prompts.tif", moving_disc(2), photometric="minisblack")
    args = [data, "--output", tmp_path / "out", "--checkpoint", random_tiny_checkpoint]
    run_example("batch_folder.py", [*args, "--image-size", 128, "--device", "cpu"], monkeypatch)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["first_labels.tif", "second_labels.tif"]
    first = tifffile.imread(out / "first_labels.tif")
    assert first.shape == (3, 48, 64) and first.dtype == np.uint16
    assert set(np.unique(first)) <= {0, 1, 3}
    printed = capsys.readouterr().out
    assert "no_prompts.tif: no no_prompts.csv, skipped" in printed
    assert "first.tif: (3, 48, 64), objects [1, 3]" in printed and "2 stacks in" in printed


def test_segment_stack_example(random_tiny_checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "labels.tif"
    args = ["--checkpoint", random_tiny_checkpoint, "--output", out, "--device", "cpu"]
    run_example("segment_stack.py", [*args, "--image-size", 128], monkeypatch)
    labels = tifffile.imread(out)
    assert labels.shape == (32, 192, 256)
    assert set(np.unique(labels)) <= {0, 1, 2}
    assert "clicks on slice 16" in capsys.readouterr().out


def test_track_everything_example(random_tiny_checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "labels.tif"
    args = ["--checkpoint", random_tiny_checkpoint, "--output", out, "--device", "cpu"]
    # random weights predict low quality: open the filters so that masks survive them
    args += ["--image-size", 128, "--frames", 3, "--points-per-side", 4]
    args += ["--pred-iou-thresh", 0, "--stability-score-thresh", 0]
    run_example("track_everything.py", args, monkeypatch)
    labels = tifffile.imread(out)
    assert labels.shape == (3, 192, 256) and labels.dtype == np.uint16
    printed = capsys.readouterr().out
    found = int(printed.split("frame 0: ")[1].split(" objects")[0])
    assert found >= 1 and set(np.unique(labels)) <= set(range(found + 1))
    assert (labels[0] > 0).any() and "3 frames in" in printed
