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
