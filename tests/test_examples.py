"""Every example runs end to end on the package's sample data with a random-weight checkpoint
in the official format (the real network, no mocks)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import tifffile

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_segment_image_example(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "mask.tif"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "segment_image.py",
            "--checkpoint",
            str(tiny_checkpoint),
            "--output",
            str(out),
            "--device",
            "cpu",
        ],
    )
    try:
        runpy.run_path(str(EXAMPLES / "segment_image.py"), run_name="__main__")
    except SystemExit as e:
        assert e.code == 0
    mask = tifffile.imread(out)
    assert mask.dtype == np.uint8 and mask.shape == (192, 256)
    assert set(np.unique(mask)) <= {0, 1}
    printed = capsys.readouterr().out
    assert "click at (row=" in printed and "predicted IoU" in printed


def test_track_timelapse_example(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "labels.tif"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "track_timelapse.py",
            "--checkpoint",
            str(tiny_checkpoint),
            "--output",
            str(out),
            "--device",
            "cpu",
            "--frames",
            "3",
        ],
    )
    try:
        runpy.run_path(str(EXAMPLES / "track_timelapse.py"), run_name="__main__")
    except SystemExit as e:
        assert e.code == 0
    labels = tifffile.imread(out)
    assert labels.shape == (3, 192, 256) and labels.dtype == np.uint16
    printed = capsys.readouterr().out
    n_cells = int(printed.split("uint16: ")[1].split(" cells")[0])
    assert n_cells >= 3  # the sample has several separate cells
    assert set(np.unique(labels)) <= set(range(n_cells + 1))
    assert "tracking 3/3 frames" in printed
